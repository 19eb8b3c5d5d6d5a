//! Rendering of PostgreSQL values as text for the recording: bind parameters
//! and sampled result values, in text or binary format.

use std::fmt::Write;

/// The longest text a single value is rendered to in the recording; longer
/// values are cut, with a note of their full size.
pub const MAX_VALUE_TEXT: usize = 64 * 1024;

/// Renders one value. `format` is 0 (text) or 1 (binary); `oid` the type.
/// The result is at most [`MAX_VALUE_TEXT`] bytes (plus a short note).
pub fn render(value: &[u8], format: i16, oid: u32) -> String {
    if format == 0 {
        return bounded_text(value);
    }
    // Binary renderings are at most twice the input (hex), but the input
    // may be large: render a bounded prefix.
    if value.len() > MAX_VALUE_TEXT / 2 {
        let mut out = hex(&value[..MAX_VALUE_TEXT / 2]);
        out.push_str(&format!("...[{} bytes]", value.len()));
        return out;
    }
    render_binary(value, oid).unwrap_or_else(|| hex(value))
}

fn bounded_text(value: &[u8]) -> String {
    if value.len() <= MAX_VALUE_TEXT {
        return String::from_utf8_lossy(value).into_owned();
    }
    let mut out = String::from_utf8_lossy(&value[..MAX_VALUE_TEXT]).into_owned();
    out.push_str(&format!("...[{} bytes]", value.len()));
    out
}

fn hex(value: &[u8]) -> String {
    let mut out = String::with_capacity(2 + value.len() * 2);
    out.push_str("\\x");
    for b in value {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn be<const N: usize>(value: &[u8]) -> Option<[u8; N]> {
    value.try_into().ok()
}

const PG_EPOCH_DAYS: i64 = 10_957; // 2000-01-01 - 1970-01-01

fn render_binary(value: &[u8], oid: u32) -> Option<String> {
    Some(match oid {
        16 => (value.first()? != &0).to_string(),
        21 => i16::from_be_bytes(be(value)?).to_string(),
        23 => i32::from_be_bytes(be(value)?).to_string(),
        20 => i64::from_be_bytes(be(value)?).to_string(),
        26 => u32::from_be_bytes(be(value)?).to_string(),
        700 => f32::from_be_bytes(be(value)?).to_string(),
        701 => f64::from_be_bytes(be(value)?).to_string(),
        // text, varchar, bpchar, name, json, unknown
        25 | 1043 | 1042 | 19 | 114 | 705 => String::from_utf8_lossy(value).into_owned(),
        // jsonb: a version byte, then text
        3802 if value.first() == Some(&1) => String::from_utf8_lossy(&value[1..]).into_owned(),
        17 => hex(value),
        2950 => {
            let b: [u8; 16] = be(value)?;
            format!(
                "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
            )
        }
        1082 => {
            let days = i32::from_be_bytes(be(value)?) as i64 + PG_EPOCH_DAYS;
            chrono_like_date(days)
        }
        1114 | 1184 => {
            let micros = i64::from_be_bytes(be(value)?);
            let days = micros.div_euclid(86_400_000_000) + PG_EPOCH_DAYS;
            let rest = micros.rem_euclid(86_400_000_000);
            let (h, m, s, us) = (rest / 3_600_000_000, rest / 60_000_000 % 60, rest / 1_000_000 % 60, rest % 1_000_000);
            let zone = if oid == 1184 { "+00" } else { "" };
            format!("{} {h:02}:{m:02}:{s:02}.{us:06}{zone}", chrono_like_date(days))
        }
        1700 => numeric(value)?,
        _ => return None,
    })
}

/// A day number since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian).
fn chrono_like_date(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, base-10000 digits.
fn numeric(value: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> { Some(i16::from_be_bytes([*value.get(i)?, *value.get(i + 1)?])) };
    let (ndigits, weight, sign, dscale) = (word(0)? as i32, word(2)? as i32, word(4)? as u16, word(6)? as i32);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    // PostgreSQL's own bounds: 131072 digits before the point (weight below
    // 32768 groups) and 16383 after; anything else is not a numeric. The
    // rendering is also bounded, whatever the input claims.
    if weight < -8192 || !(0..=16383).contains(&dscale) || ndigits < 0 {
        return None;
    }
    if (weight.max(0) as usize + 1) * 4 + dscale as usize + 2 > MAX_VALUE_TEXT {
        return Some(format!("[numeric of about {} digits]", (weight.max(0) + 1) * 4 + dscale));
    }
    let digits: Vec<i32> = (0..ndigits).map(|i| word(8 + 2 * i as usize).map(i32::from)).collect::<Option<_>>()?;
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            if i == 0 {
                let _ = write!(out, "{d}");
            } else {
                let _ = write!(out, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut i = weight + 1;
        while (fraction.len() as i32) < dscale {
            let d = if i < 0 { 0 } else { digits.get(i as usize).copied().unwrap_or(0) };
            let _ = write!(fraction, "{d:04}");
            i += 1;
        }
        fraction.truncate(dscale as usize);
        out.push_str(&fraction);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_render_as_postgres_prints_them() {
        assert_eq!(render(&42i32.to_be_bytes(), 1, 23), "42");
        assert_eq!(render(&(-7i64).to_be_bytes(), 1, 20), "-7");
        assert_eq!(render(&[1], 1, 16), "true");
        assert_eq!(render(b"hello", 1, 25), "hello");
        assert_eq!(render(&[0xde, 0xad], 1, 17), "\\xdead");
        assert_eq!(render(&1.5f64.to_be_bytes(), 1, 701), "1.5");
        assert_eq!(render(&0i32.to_be_bytes(), 1, 1082), "2000-01-01");
        assert_eq!(render(&(9_000i32).to_be_bytes(), 1, 1082), "2024-08-22");
        assert_eq!(render(&86_400_000_001i64.to_be_bytes(), 1, 1184), "2000-01-02 00:00:00.000001+00");
        // 12345.678: weight 1, digits [1, 2345, 6780], dscale 3
        let numeric = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c];
        assert_eq!(render(&numeric, 1, 1700), "12345.678");
        assert_eq!(render(&[1, 2, 3], 1, 999_999), "\\x010203");
        // A numeric claiming 32767 groups of digits is not rendered in full.
        assert!(render(&[0, 0, 0x7f, 0xff, 0, 0, 0x7f, 0xff], 1, 1700).len() < 100);
        assert!(render(&vec![b'x'; MAX_VALUE_TEXT * 2], 0, 25).len() < MAX_VALUE_TEXT + 32);
        assert!(render(&vec![7u8; MAX_VALUE_TEXT * 2], 1, 17).len() < MAX_VALUE_TEXT + 32);
        assert_eq!(render(b"text format", 0, 23), "text format");
    }
}
