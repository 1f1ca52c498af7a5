//! Account field rules, shared by registration and the admin CLI.

use crate::error::ValidationErrors;

pub fn username(value: &str, errors: &mut ValidationErrors) {
    let len = value.chars().count();
    if !(3..=30).contains(&len) {
        errors.add("username", "must be 3 to 30 characters long");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        errors.add("username", "may contain only letters, digits, '_' and '-'");
    }
}

/// A pragmatic address check: one `@`, a non-empty local part, a dotted domain of
/// letters, digits and hyphens, no spaces. Delivery is what really validates.
pub fn email(value: &str, errors: &mut ValidationErrors) {
    let valid = value.len() <= 254
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && !local.contains(char::is_whitespace)
                && !domain.contains('@')
                && domain.contains('.')
                && domain.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        });
    if !valid {
        errors.add(
            "email",
            "must be a valid e-mail address such as name@example.com",
        );
    }
}

pub fn password(value: &str, errors: &mut ValidationErrors) {
    let len = value.chars().count();
    if !(8..=128).contains(&len) {
        errors.add("password", "must be 8 to 128 characters long");
    }
    if !value.chars().any(|c| c.is_lowercase()) {
        errors.add("password", "must contain a lower-case letter");
    }
    if !value.chars().any(|c| c.is_uppercase()) {
        errors.add("password", "must contain an upper-case letter");
    }
    if !value.chars().any(|c| c.is_ascii_digit()) {
        errors.add("password", "must contain a digit");
    }
}

pub fn full_name(value: &str, errors: &mut ValidationErrors) {
    if value.chars().count() > 100 {
        errors.add("full_name", "must be at most 100 characters long");
    }
    if value.chars().any(char::is_control) {
        errors.add("full_name", "must not contain control characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: fn(&str, &mut ValidationErrors), value: &str) -> bool {
        let mut errors = ValidationErrors::default();
        f(value, &mut errors);
        errors.is_empty()
    }

    #[test]
    fn usernames() {
        for ok in ["abc", "a_b-c", "User_123", &"x".repeat(30)] {
            assert!(check(username, ok), "{ok}");
        }
        for bad in ["ab", &"x".repeat(31), "has space", "dot.ted", "ünï", ""] {
            assert!(!check(username, bad), "{bad}");
        }
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org"] {
            assert!(check(email, ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            "@b.com",
            "a b@c.com",
            "a@-b.com",
            "a@b..com",
        ] {
            assert!(!check(email, bad), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(check(password, "Abcdefg1"));
        assert!(check(password, &format!("Aa1{}", "x".repeat(125))));
        for bad in [
            "Abcdef1",
            "abcdefg1",
            "ABCDEFG1",
            "Abcdefgh",
            &format!("Aa1{}", "x".repeat(126)),
        ] {
            assert!(!check(password, bad), "{bad}");
        }
    }
}
