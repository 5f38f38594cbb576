//! Names, free text, identifiers and codes: trimming, whitespace and
//! control-character cleanup, and a length bound that never splits a char.

/// Characters that render as nothing and only confuse matching: zero-width
/// spaces and joiners, word joiner, byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// A name or free text: trimmed, inner whitespace runs (tabs, newlines,
/// no-break spaces) collapsed to one space, control and invisible characters
/// removed, at most `max_chars` characters (cut at a char boundary, then
/// trimmed again so a cut never leaves a trailing space).
pub fn text(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars.saturating_mul(4)));
    let mut count = 0usize;
    let mut pending_space = false;
    for c in raw.chars() {
        if c.is_whitespace() {
            pending_space = true;
        } else if c.is_control() || is_invisible(c) {
            continue;
        } else {
            if pending_space && !out.is_empty() {
                if count + 1 >= max_chars {
                    break;
                }
                out.push(' ');
                count += 1;
            }
            pending_space = false;
            if count >= max_chars {
                break;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// An identifier (CRM id, invoice id): trimmed, control and invisible
/// characters removed, otherwise exact (inner spaces and case are kept,
/// since the destination matches on them).
pub fn id(raw: &str) -> String {
    raw.trim()
        .chars()
        .filter(|c| !c.is_control() && !is_invisible(*c))
        .collect()
}

/// A machine code (`card_declined`, `demo`): cleaned like [`text`], then
/// lower-cased, so codes compare by value.
pub fn code(raw: &str, max_chars: usize) -> String {
    let cleaned = text(raw, max_chars).to_lowercase();
    // Lower-casing can lengthen a string ('İ' → "i̇"), so bound again.
    if cleaned.chars().count() > max_chars {
        text(&cleaned, max_chars)
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_whitespace_and_controls() {
        assert_eq!(text("  Alex \t\n  Kim ", 100), "Alex Kim");
        assert_eq!(text("A\u{0007}le\u{200B}x", 100), "Alex");
        assert_eq!(text("a \u{0007} b", 100), "a b");
        assert_eq!(text("\u{00A0}Zoë\u{00A0}", 100), "Zoë");
    }

    #[test]
    fn bounds_by_chars_without_trailing_space() {
        assert_eq!(text("ééé", 2), "éé");
        assert_eq!(text("ab cd", 3), "ab");
        assert_eq!(text("ab cd", 4), "ab c");
        assert_eq!(text("abc", 0), "");
    }

    #[test]
    fn ids_keep_inner_text() {
        assert_eq!(id("  D 9001\u{0000} "), "D 9001");
        assert_eq!(code(" Card_Declined ", 64), "card_declined");
    }
}
