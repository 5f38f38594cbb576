//! Money: ISO 4217 currency codes and amounts in minor units, with each
//! currency's own exponent from the `iso_currency` crate (JPY 0, USD 2, KWD 3).

use iso_currency::Currency;

use super::Invalid;

/// Exponent assumed for an amount sent without a currency: that of most
/// currencies (cents). Documented in the crate docs' mapping table.
pub const DEFAULT_EXPONENT: u16 = 2;

/// A currency as its upper-case ISO 4217 code; unknown codes are refused.
pub fn currency(raw: &str) -> Result<String, Invalid> {
    let code = raw.trim().to_ascii_uppercase();
    Currency::from_code(&code)
        .map(|c| c.code().to_owned())
        .ok_or(Invalid::new("must be a known ISO 4217 currency code"))
}

/// `amount` in major units → integer minor units of `currency` (an ISO 4217
/// code as [`currency`] returns it, or `None` for [`DEFAULT_EXPONENT`]),
/// rounded half away from zero: 99.5 USD → 9950, 1200 JPY → 1200,
/// 1.2345 KWD → 1235. Negative, non-finite or overflowing amounts are refused.
pub fn amount_minor(amount: f64, currency: Option<&str>) -> Result<i64, Invalid> {
    if !amount.is_finite() || amount < 0.0 {
        return Err(Invalid::new("must be a non-negative number"));
    }
    let exponent = currency
        .and_then(Currency::from_code)
        .map_or(DEFAULT_EXPONENT, |c| c.exponent().unwrap_or(0));
    let minor = (amount * 10f64.powi(i32::from(exponent))).round();
    // 2^53: beyond it f64 no longer holds every integer, so the value is not exact.
    if minor > 9_007_199_254_740_992.0 {
        return Err(Invalid::new("is too large"));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok(minor as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents() {
        assert_eq!(amount_minor(99.5, Some("USD")).unwrap(), 9950);
        assert_eq!(amount_minor(1200.0, Some("JPY")).unwrap(), 1200);
        assert_eq!(amount_minor(1.2345, Some("KWD")).unwrap(), 1235);
        assert_eq!(amount_minor(0.1, None).unwrap(), 10);
        assert!(amount_minor(-1.0, None).is_err());
        assert!(amount_minor(f64::NAN, None).is_err());
        assert_eq!(currency(" usd ").unwrap(), "USD");
        assert!(currency("XYZ").is_err());
    }
}
