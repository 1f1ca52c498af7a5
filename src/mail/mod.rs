//! Outgoing mail. A request that decides to mail writes the message to the outbox
//! table (`db::outbox`), in its own transaction, and wakes the sender
//! (`sender::MailSender`), which delivers it over SMTP — or, with no `SMTP_URL`,
//! writes it to `$DEVPOCKET_DATA_DIR/outbox/` — retrying with backoff. A mail server
//! that is down delays mail; it never loses it, and never holds up a request.

pub mod sender;

use crate::db::outbox::NewMail;

/// The messages we send, each a pair of templates in `templates/mail/`: `NAME.txt`
/// (whose first line is `Subject: …`) and `NAME.html`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Verification,
    PasswordReset,
    PasswordChanged,
}

impl Kind {
    pub const ALL: [Kind; 3] = [
        Kind::Verification,
        Kind::PasswordReset,
        Kind::PasswordChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Verification => "verification",
            Kind::PasswordReset => "password_reset",
            Kind::PasswordChanged => "password_changed",
        }
    }

    fn templates(self) -> (&'static str, &'static str) {
        match self {
            Kind::Verification => (
                include_str!("../../templates/mail/verification.txt"),
                include_str!("../../templates/mail/verification.html"),
            ),
            Kind::PasswordReset => (
                include_str!("../../templates/mail/password_reset.txt"),
                include_str!("../../templates/mail/password_reset.html"),
            ),
            Kind::PasswordChanged => (
                include_str!("../../templates/mail/password_changed.txt"),
                include_str!("../../templates/mail/password_changed.html"),
            ),
        }
    }

    /// The message to `to`, with each `{{name}}` replaced by its value (escaped in
    /// the HTML part).
    pub fn render(self, to: &str, values: &[(&str, &str)]) -> NewMail {
        let (text, html) = self.templates();
        let text = fill(text, values, |v| v.to_owned());
        let (subject, body) = text
            .split_once('\n')
            .map(|(first, rest)| {
                (
                    first.strip_prefix("Subject:").unwrap_or(first).trim(),
                    rest.trim_start_matches('\n'),
                )
            })
            .unwrap_or(("DevPocket", text.as_str()));
        NewMail {
            id: uuid::Uuid::new_v4(),
            kind: self.as_str(),
            recipient: to.to_owned(),
            subject: subject.to_owned(),
            text_body: body.to_owned(),
            html_body: fill(html, values, escape_html),
        }
    }
}

fn fill(template: &str, values: &[(&str, &str)], escape: impl Fn(&str) -> String) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), &escape(value));
    }
    out
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder a template uses, with a value.
    const VALUES: [(&str, &str); 9] = [
        ("username", "<alice>"),
        ("email", "alice@example.com"),
        ("code", "012345"),
        ("minutes", "15"),
        ("link", "https://example.com/reset?token=abc&x=1"),
        ("token", "abc"),
        ("how", "changed"),
        ("time", "2026-12-04 10:00 UTC"),
        ("address", "192.0.2.1"),
    ];

    #[test]
    fn every_template_is_filled_in_and_its_html_escaped() {
        for kind in Kind::ALL {
            let mail = kind.render("alice@example.com", &VALUES);
            for part in [&mail.subject, &mail.text_body, &mail.html_body] {
                assert!(!part.contains("{{"), "{kind:?}: {part}");
            }
            assert!(!mail.subject.is_empty() && !mail.subject.contains('\n'));
            assert!(!mail.text_body.starts_with("Subject"), "{kind:?}");
            assert!(mail.text_body.contains("<alice>"), "{kind:?}");
            assert!(mail.html_body.contains("&lt;alice&gt;"), "{kind:?}");
            assert!(!mail.html_body.contains("<alice>"), "{kind:?}");
        }
        let reset = Kind::PasswordReset.render("a@example.com", &VALUES);
        assert!(reset.html_body.contains("token=abc&amp;x=1"));
    }
}
