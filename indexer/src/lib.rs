//! Proctor's search index over recorded sessions (tantivy), built from the
//! recorder's sealed segments and WAL tail.
//!
//! Architecture invariant: the index is derived data. It is rebuilt from the
//! segments alone, holds nothing the segments do not hold, and knows nothing
//! of protocols or HTTP. It reads recordings through `proctor-recorder`'s
//! reader, never by parsing Parquet itself.
