//! Regression tests named after the bugs they pin: a red-team report found
//! secrets that reached clients because a query glued characters to them
//! (`'x' || v`, `lpad(v, 120, '0')`, `string_agg(v, '')`), because a card
//! number stored as a number was printed with a sign or a fraction, and
//! because a secret without a format of its own was named, not shaped, like
//! one (`secret = ...`, a column `client_secret`).

use super::{Column, Counts, Detector, Masker, MaskingKey, Profile, ProfileConfig, find, is_card_number};

fn masker(toml_text: &str) -> Masker {
    let config: ProfileConfig = toml::from_str(toml_text).unwrap();
    Masker::new(Profile::new("p", &config).unwrap(), MaskingKey::new(b"k".to_vec()))
}

/// `value` with each finding replaced by its detector's name in
/// brackets: what is masked, and what is left of the glue around it.
fn masked(value: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    for f in find(value, &Detector::ALL) {
        out.push_str(&value[at..f.range.start]);
        out.push_str(&format!("[{}]", f.detector.as_str()));
        at = f.range.end;
    }
    out.push_str(&value[at..]);
    out
}

/// `'x' || v`, `v || 'x'`, `'1' || v`, `'_' || v`: the secret is found
/// in each, and only the secret is masked.
fn check_glued(secret: &str, detector: &str) {
    let marker = format!("[{detector}]");
    for (before, after) in [("", ""), ("x", ""), ("", "x"), ("1", ""), ("_", ""), ("", "_"), ("X", ""), ("", "9")] {
        let value = format!("{before}{secret}{after}");
        assert_eq!(masked(&value), format!("{before}{marker}{after}"), "{value:?}");
    }
}

#[test]
fn regression_glued_characters_hide_card_numbers() {
    check_glued("4539148803436467", "card");
    check_glued("378282246310005", "card");
    // The card at the end of a digit run, padded with zeros, and two
    // card numbers aggregated into one run.
    assert_eq!(masked("14539148803436467"), "1[card]");
    assert_eq!(masked(&format!("{}4539148803436467", "0".repeat(104))), format!("{}[card]", "0".repeat(104)));
    assert_eq!(masked("45391488034364674539148803436467"), "[card][card]");
    assert_eq!(masked("453914880343646737828224631000545391488034364674"), "[card][card][card]4");
    assert_eq!(masked("4539148803436467378282246310005"), "[card][card]");
    assert_eq!(masked(&"4539148803436467".repeat(5)), "[card]".repeat(5));
    assert_eq!(masked("order#4539148803436467/2"), "order#[card]/2");
    // Grouped ones after other numbers in the same run.
    assert_eq!(masked("12 4111 1111 1111 1111"), "12 [card]");
    assert_eq!(masked("4111 1111 1111 1111 2027"), "[card] 2027");
    // Look-alikes stay: Luhn fails, no issuer, unrelated digits around.
    assert_eq!(masked("x4539148803436468"), "x4539148803436468");
    assert_eq!(masked("10000000000000000000001"), "10000000000000000000001");
}

#[test]
fn regression_glued_characters_hide_ibans() {
    check_glued("DE89370400440532013000", "iban");
    check_glued("GB82WEST12345698765432", "iban");
    check_glued("NO9386011117947", "iban");
    check_glued("DE89 3704 0044 0532 0130 00", "iban");
    assert_eq!(masked("xDE89370400440532013000"), "x[iban]");
    assert_eq!(masked("1DE89370400440532013000"), "1[iban]");
    assert_eq!(masked("DE89370400440532013000X"), "[iban]X");
    assert_eq!(masked("GB12DE89370400440532013000"), "GB12[iban]");
    assert_eq!(masked("DE89370400440532013000GB82WEST12345698765432"), "[iban][iban]");
    assert_eq!(masked("DE89 3704 0044 0532 0130 00 EUR"), "[iban] EUR");
    assert_eq!(masked("xDE88370400440532013000"), "xDE88370400440532013000", "mod 97 fails");
    assert_eq!(masked("DE89 37040044 0532 0130 00"), "DE89 37040044 0532 0130 00", "grouped, but not in fours");
}

#[test]
fn regression_glued_characters_hide_prefixed_tokens() {
    check_glued("AKIAIOSFODNN7EXAMPLE", "aws_access_key");
    check_glued("ASIAY34FZKBOKMUTVV7A", "aws_access_key");
    check_glued("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", "github_token");
    check_glued("gho_16C7e42F292c6912E7710c838347Ae178B4a", "github_token");
    check_glued(
        "github_pat_11ABCDEFGHIJKLMNOPQRST_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456",
        "github_token",
    );
    // A Slack token's last part has no fixed length: what is glued to
    // it after is masked with it, what is glued before is not.
    let slack = "xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1";
    for before in ["x", "1", "_"] {
        assert_eq!(masked(&format!("{before}{slack}")), format!("{before}[slack_token]"));
    }
    assert_eq!(masked(&format!("{slack}x")), "[slack_token]");
    assert_eq!(masked("AKIAIOSFODNN7EXAMPLEQ"), "[aws_access_key]Q");
    assert_eq!(masked("xAKIAIOSFODNN7EXAMPL"), "xAKIAIOSFODNN7EXAMPL", "15 characters after the prefix");
}

#[test]
fn regression_glued_characters_hide_jwts() {
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    for before in ["x", "1", "_", "Bearer:"] {
        assert_eq!(masked(&format!("{before}{jwt}")), format!("{before}[jwt]"));
    }
    // The signature has no fixed length: glue after it is masked too.
    assert_eq!(masked(&format!("{jwt}x")), "[jwt]");
    assert_eq!(masked(&format!("{jwt}.")), "[jwt].", "not base64url: glue kept");
    assert_eq!(masked("xeyJmb28iOiJiYXIifQ.eyJmb28iOiJiYXIifQ"), "xeyJmb28iOiJiYXIifQ.eyJmb28iOiJiYXIifQ");
    assert_eq!(masked("xeyJhbGciOiJub25l.abc.def"), "xeyJhbGciOiJub25l.abc.def", "header not JSON");
}

/// What is not found in glued digits (written down in README): a card
/// number with unrelated digits on both sides, and card numbers of other
/// lengths than 16 (Amex: 15) glued to digits.
#[test]
fn glued_card_numbers_between_unrelated_digits_are_not_found() {
    for value in ["045391488034364671", "04222222222222", "94111111111111111110"] {
        assert_eq!(masked(value), value, "{value:?}");
    }
    assert_eq!(masked("x4222222222222"), "x[card]", "13 digits, glued to a letter");
    assert_eq!(masked("4111111111111111110_"), "[card]_", "19 digits, glued to `_`");
}

/// E-mail addresses take what is glued to them into their local part or
/// top-level domain; digits or `_` glued after the domain hide them.
#[test]
fn glued_email_addresses_need_a_boundary_after_them() {
    assert_eq!(masked("x1_ada@example.com"), "[email]");
    assert_eq!(masked("ada@example.comx"), "[email]");
    for value in ["ada@example.com1", "ada@example.com_"] {
        assert_eq!(masked(value), value, "{value:?}");
    }
}

/// SSNs and phone numbers glued to letters, digits or `_` are ambiguous
/// (an SSN's digits after another digit are an order number's) and are
/// not looked for there; punctuation and spaces are boundaries.
#[test]
fn glued_ssns_and_phone_numbers_need_a_boundary() {
    assert_eq!(masked("ssn:123-45-6789;"), "ssn:[ssn];");
    for value in ["1123-45-6789", "123-45-67891", "x123-45-6789", "_123-45-6789", "123-45-6789x"] {
        assert_eq!(masked(value), value, "{value:?}");
    }
    assert_eq!(masked("(415) 555-2671"), "[phone]");
    assert_eq!(masked("tel:415-555-2671."), "tel:[phone].");
    assert_eq!(masked("x+14155552671"), "x[phone]", "a `+` starts an E.164 number");
    for value in ["x415-555-2671", "1415-555-2671", "415-555-2671x", "+14155552671x", "+141555526711234567"] {
        assert_eq!(masked(value), value, "{value:?}");
    }
}

#[test]
fn regression_card_numbers_stored_as_numbers_leak_with_a_sign_or_a_fraction() {
    for value in [
        "4539148803436467",
        "4539148803436467.00",
        "4539148803436467.0",
        "4539148803436467.5",
        "-4539148803436467",
        "+4539148803436467",
        "-4539148803436467.00",
        "378282246310005.000000",
        "4539148803436467.",
    ] {
        assert!(is_card_number(value), "{value}");
    }
    for value in [
        "4539148803436468.00",
        "1234567890123456.00",
        "453914880343646.7",
        "--4539148803436467",
        "4539148803436467.0.0",
        "4539148803436467e0",
        " 4539148803436467",
        "",
        "-",
    ] {
        assert!(!is_card_number(value), "{value}");
    }
}

#[test]
fn regression_secrets_named_by_their_key_are_not_recognised() {
    let secret = "n7B3/5SApYXfE+1ds3vbgqMMvFuz4zf3ATNeY2Ps";
    for (before, after) in [
        ("secret = ", ""),
        ("password: ", ""),
        ("db_password=", "\n"),
        ("{\"client_secret\": \"", "\", \"ok\": true}"),
        ("<Password>", "</Password>"),
        ("GET /v1/items?limit=10&api_key=", "&page=2 HTTP/1.1"),
        ("X-Api-Key: ", ""),
        ("Authorization: Bearer ", ""),
        ("export STRIPE_SECRET_KEY='", "'"),
        ("apiKey => \"", "\""),
        ("PWD := ", ""),
    ] {
        let value = format!("{before}{secret}{after}");
        assert_eq!(masked(&value), format!("{before}[secret_by_name]{after}"), "{value:?}");
    }
    // Named, but not random: words, placeholders, references; or the
    // name is of a fact about a secret.
    for value in [
        "password=hunter2",
        "password: correct-horse-battery-staple",
        "token = ${GITHUB_TOKEN}",
        "secret: projects/acme/secrets/db-password/versions/3",
        "api_key=YOUR_API_KEY_HERE",
        "\"private_key_id\": \"cb16d7b75d5ad4ac12a9f644d711943794e8249b\"",
        "token_type=bearer&expires_in=3600",
        "token expired at 2024-05-06T13:45:30Z",
        "keyboard: 5e1f2a9c7b3d4e6f8a0b",
    ] {
        assert_eq!(masked(value), value, "{value:?}");
    }
    // A value another detector knows is reported by it alone.
    assert_eq!(masked("token: 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"), "token: [github_token]");
    assert_eq!(
        masked("Credential=AKIAIOSFODNN7EXAMPLE/20240611/eu-west-1/s3/aws4_request"),
        "Credential=[aws_access_key]/20240611/eu-west-1/s3/aws4_request"
    );
}

#[test]
fn regression_a_secret_in_a_column_named_secret_reaches_the_client_raw() {
    let m = masker(r#"detectors = ["all"]"#);
    let mut counts = Counts::new();
    let col = |name| Column { name, table: None };
    let aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let masked = "[secret_by_name:masked]";
    assert_eq!(m.mask(aws, Some(&col("secret")), &mut counts), masked);
    assert_eq!(m.mask(aws, Some(&col("X-Api-Key")), &mut counts), masked);
    assert_eq!(m.mask(" Winter2024! ", Some(&col("db_password")), &mut counts), format!(" {masked} "));
    assert_eq!(counts.get("secret_by_name"), Some(&3));
    // Not random, not a secret's name, or not one token: as free text.
    for (value, name) in [
        ("changeme", "password"),
        ("bearer", "token_type"),
        ("cb16d7b75d5ad4ac12a9f644d711943794e8249b", "private_key_id"),
        (aws, "note"),
        ("rotated by ops, see ticket 4411", "secret"),
    ] {
        assert_eq!(m.mask(value, Some(&col(name)), &mut counts), value, "{name}");
    }
    assert_eq!(m.mask("paid 4111 1111 1111 1111", Some(&col("secret")), &mut counts), "paid [card:masked]");
}
