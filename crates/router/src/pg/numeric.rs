//! PostgreSQL `numeric` in its binary form, to and from decimal text,
//! exactly (no floating point on the way).
//!
//! The binary form is a header of four 16-bit fields — the number of
//! digits, the weight (the power of 10000 of the first digit), the sign
//! (positive, negative, NaN, +Infinity, -Infinity) and the display scale
//! (digits after the decimal point) — followed by base-10000 digits.

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
/// The largest display scale the binary form can carry.
const MAX_DSCALE: i64 = 0x3FFF;
/// Longest accepted input, so a request cannot make us allocate much.
const MAX_INPUT_LEN: usize = 1 << 17;

fn header(out: &mut Vec<u8>, ndigits: i16, weight: i16, sign: u16, dscale: u16) {
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
}

/// Encodes decimal text (`-12.340`, `1e-3`, `NaN`, `Infinity`,
/// `-Infinity`) as binary numeric, keeping the scale written (`1.50`
/// keeps two decimals, as PostgreSQL's own input does).
pub fn encode(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if text.len() > MAX_INPUT_LEN {
        return Err("too many digits".into());
    }
    match text.to_ascii_lowercase().as_str() {
        "nan" => {
            header(out, 0, 0, SIGN_NAN, 0);
            return Ok(());
        }
        "infinity" | "+infinity" | "inf" | "+inf" => {
            header(out, 0, 0, SIGN_PINF, 0);
            return Ok(());
        }
        "-infinity" | "-inf" => {
            header(out, 0, 0, SIGN_NINF, 0);
            return Ok(());
        }
        _ => {}
    }
    let bad = || format!("not a decimal number: {text:?}");
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => {
            let e = &rest[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            (&rest[..i], e.parse::<i64>().map_err(|_| bad())?)
        }
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let dscale = (frac_part.len() as i64 - exponent).max(0);
    if dscale > MAX_DSCALE {
        return Err("too many digits after the decimal point".into());
    }
    // All digits in order; `point` is how many of them precede the decimal
    // point (negative or past the end after an exponent).
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let mut point = int_part.len() as i64 + exponent;
    let lead = all.iter().take_while(|&&d| d == 0).count();
    point -= lead as i64;
    let digits = &all[lead..];
    let trail = digits.iter().rev().take_while(|&&d| d == 0).count();
    let digits = &digits[..digits.len() - trail];
    if digits.is_empty() {
        header(out, 0, 0, SIGN_POS, dscale as u16);
        return Ok(());
    }
    // Digit i has decimal exponent point-1-i; base-10000 digit g holds the
    // decimal exponents 4g..4g+3.
    let first_exp = point - 1;
    let last_exp = point - digits.len() as i64;
    let weight = first_exp.div_euclid(4);
    let last_group = last_exp.div_euclid(4);
    let ndigits = weight - last_group + 1;
    let weight = i16::try_from(weight).map_err(|_| "value out of numeric range".to_string())?;
    let ndigits = i16::try_from(ndigits).map_err(|_| "too many digits".to_string())?;
    let mut groups = vec![0i16; ndigits as usize];
    for (i, &d) in digits.iter().enumerate() {
        let e = first_exp - i as i64;
        let idx = (i64::from(weight) - e.div_euclid(4)) as usize;
        groups[idx] += i16::from(d) * 10i16.pow(e.rem_euclid(4) as u32);
    }
    let sign = if negative { SIGN_NEG } else { SIGN_POS };
    header(out, ndigits, weight, sign, dscale as u16);
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
}

/// Decodes binary numeric into its exact decimal text, `NaN`, `Infinity`
/// or `-Infinity`.
pub fn decode(buf: &[u8]) -> Result<String, String> {
    let field = |i: usize| -> Result<u16, String> {
        buf.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_string())
    };
    let ndigits = field(0)? as i16;
    let weight = field(1)? as i16;
    let sign = field(2)?;
    let dscale = field(3)?;
    match sign {
        SIGN_NAN => return Ok("NaN".into()),
        SIGN_PINF => return Ok("Infinity".into()),
        SIGN_NINF => return Ok("-Infinity".into()),
        SIGN_POS | SIGN_NEG => {}
        _ => return Err(format!("bad numeric sign {sign:#x}")),
    }
    if ndigits < 0 || buf.len() != 8 + 2 * ndigits as usize || dscale > MAX_DSCALE as u16 {
        return Err("malformed numeric".into());
    }
    let digits: Vec<u16> = (0..ndigits as usize)
        .map(|i| field(4 + i))
        .collect::<Result<_, _>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return Err("malformed numeric digit".into());
    }
    let digit_at = |idx: i64| -> u16 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == SIGN_NEG && digits.iter().any(|&d| d != 0) {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&digit_at(0).to_string());
        for idx in 1..=i64::from(weight) {
            out.push_str(&format!("{:04}", digit_at(idx)));
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::with_capacity(usize::from(dscale) + 4);
        let mut idx = i64::from(weight) + 1;
        while frac.len() < usize::from(dscale) {
            frac.push_str(&format!("{:04}", digit_at(idx)));
            idx += 1;
        }
        frac.truncate(usize::from(dscale));
        out.push_str(&frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        encode(s, &mut v).unwrap();
        v
    }

    fn words(v: &[u8]) -> Vec<i32> {
        v.chunks(2)
            .map(|c| i32::from(u16::from_be_bytes([c[0], c[1]])))
            .collect()
    }

    #[test]
    fn encodes_the_binary_layout() {
        // 12345.678 = 1 | 2345 . 6780 → weight 1, dscale 3.
        assert_eq!(words(&enc("12345.678")), vec![3, 1, 0, 3, 1, 2345, 6780]);
        // 0.0001 → a single digit 1 at weight -1.
        assert_eq!(words(&enc("0.0001")), vec![1, 0xFFFF, 0, 4, 1]);
        assert_eq!(words(&enc("-10000")), vec![1, 1, 0x4000, 0, 1]);
        assert_eq!(words(&enc("0.000")), vec![0, 0, 0, 3]);
        assert_eq!(words(&enc("1.5e3")), vec![1, 0, 0, 0, 1500]);
        assert_eq!(words(&enc("NaN")), vec![0, 0, 0xC000, 0]);
        assert_eq!(words(&enc("-Infinity")), vec![0, 0, 0xF000, 0]);
    }

    #[test]
    fn round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "0.5",
            "-0.00001",
            "123456789012345678901234567890.123456789012345678901234567890",
            "10000",
            "9999.9999",
            "1.50",
            "100000000",
            "0.000000000000000000000000000001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(decode(&enc(s)).unwrap(), s, "{s}");
        }
        assert_eq!(decode(&enc("1e-3")).unwrap(), "0.001");
        assert_eq!(decode(&enc("+12.0E+2")).unwrap(), "1200");
        assert_eq!(decode(&enc(".5")).unwrap(), "0.5");
        assert_eq!(decode(&enc("5.")).unwrap(), "5");
        assert_eq!(decode(&enc("-0")).unwrap(), "0");
        assert_eq!(decode(&enc("007.10")).unwrap(), "7.10");
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "",
            "-",
            ".",
            "1.2.3",
            "1e",
            "abc",
            "1 ",
            " 1",
            "1e1234567",
            "0x10",
            "1,5",
        ] {
            assert!(encode(s, &mut Vec::new()).is_err(), "{s:?}");
        }
        assert!(encode("1e-20000", &mut Vec::new()).is_err());
        assert!(encode("1e200000", &mut Vec::new()).is_err());
        assert!(decode(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
    }
}
