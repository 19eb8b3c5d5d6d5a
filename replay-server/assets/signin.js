// Not signed in: to sign-in, with the whole way back, the link's #fragment
// (an event, a moment) included, which the server never sees.
'use strict';
location.replace('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash));
