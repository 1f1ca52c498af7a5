//! Usernames for accounts made by Google sign-in: from the e-mail address's local
//! part (or else the name), kept to the registration rules (3–30 of `A-Z a-z 0-9 _
//! -`), with digits added when taken.

/// The longest username (see `validation::username`).
const MAX_CHARS: usize = 30;
const MIN_CHARS: usize = 3;
/// Tries with a random suffix after the small ones.
const RANDOM_TRIES: usize = 10;

/// `value` in the allowed characters: a run of separators (`.`, `+`, spaces, other
/// punctuation) becomes one `_`, or `-` when it starts with one; other characters
/// are dropped, and separators are trimmed from the ends.
fn sanitize(value: &str) -> String {
    let mut out = String::new();
    let mut pending = None;
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            if let Some(separator) = pending.take()
                && !out.is_empty()
            {
                out.push(separator);
            }
            out.push(c);
        } else if c.is_ascii_punctuation() || c.is_whitespace() {
            pending.get_or_insert(if c == '-' { '-' } else { '_' });
        }
    }
    out.truncate(MAX_CHARS);
    out.trim_end_matches(['_', '-']).to_owned()
}

/// The base of the usernames to try: the e-mail address's local part (before any
/// `+tag`), else the name, else `user`.
fn base(email: &str, name: Option<&str>) -> String {
    let local = email.split('@').next().unwrap_or_default();
    let local = local.split('+').next().unwrap_or_default();
    [Some(local), name]
        .into_iter()
        .flatten()
        .map(sanitize)
        .find(|candidate| candidate.len() >= MIN_CHARS)
        .unwrap_or_else(|| "user".to_owned())
}

/// `base` and `suffix`, cutting `base` so that the whole fits.
fn with_suffix(base: &str, suffix: &str) -> String {
    let keep = MAX_CHARS.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", &base[..keep])
}

/// The usernames to try, in order: the base, the base with 2 to 9, then with
/// random four-digit numbers.
pub fn candidates(email: &str, name: Option<&str>) -> impl Iterator<Item = String> {
    let base = base(email, name);
    let small = (2..=9).map(|n| n.to_string());
    let random = (0..RANDOM_TRIES).map(|_| rand::random_range(1000..10_000u32).to_string());
    std::iter::once(base.clone()).chain(
        small
            .chain(random)
            .map(move |suffix| with_suffix(&base, &suffix)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ValidationErrors;

    fn valid(username: &str) -> bool {
        let mut errors = ValidationErrors::default();
        crate::auth::validation::username(username, &mut errors);
        errors.is_empty()
    }

    #[test]
    fn the_local_part_is_kept_to_the_rules() {
        for (email, name, expected) in [
            ("alice@gmail.com", None, "alice"),
            ("Alice.Smith+news@gmail.com", None, "Alice_Smith"),
            ("a..b__c@x.com", None, "a_b_c"),
            ("_x-y_@x.com", None, "x-y"),
            ("mary-jane@x.com", None, "mary-jane"),
            ("josé.garcía@x.com", None, "jos_garca"),
            ("jo@x.com", Some("Jo Nakamura"), "Jo_Nakamura"),
            ("李@x.com", Some("李小龙"), "user"),
            ("xy@x.com", None, "user"),
            (&format!("{}@x.com", "a".repeat(40)), None, &"a".repeat(30)),
        ] {
            let first = candidates(email, name).next().expect("a candidate");
            assert_eq!(first, expected, "{email}");
            assert!(valid(&first), "{first}");
        }
    }

    #[test]
    fn taken_names_get_digits_and_stay_valid() {
        let all: Vec<String> = candidates("alice@gmail.com", None).collect();
        assert_eq!(&all[..3], ["alice", "alice2", "alice3"]);
        assert_eq!(all.len(), 1 + 8 + RANDOM_TRIES);
        let long: Vec<String> = candidates(&format!("{}@x.com", "b".repeat(30)), None).collect();
        for name in long.iter().chain(&all) {
            assert!(valid(name), "{name}");
        }
        assert!(
            long[9].starts_with(&"b".repeat(26)) && long[9].len() == 30,
            "{}",
            long[9]
        );
    }
}
