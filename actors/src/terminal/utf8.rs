//! Decodes the PTY's byte stream as UTF-8 for JSON text frames, carrying a
//! character split across SSH reads over to the next read: no U+FFFD that was not
//! in the source, and never more than one incomplete character (3 bytes) held.

#[derive(Debug, Default)]
pub struct Utf8Carry {
    /// The start of a character whose remaining bytes have not arrived yet.
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text `chunk` completes: whatever was held back, then `chunk` up to an
    /// incomplete character at its end (held for the next call). Bytes that are
    /// invalid in the source itself become U+FFFD, as a terminal would show them.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.pending.len());
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Never empty: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: keep it for later.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that are invalid in the source itself.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back for the next read.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting `text` in two gives `text` back, with nothing held.
    #[test]
    fn a_character_split_at_any_byte_arrives_whole() {
        let text = "a ñ € 😀 z";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = carry.push(&bytes[..cut]);
            assert!(carry.pending() <= 3, "cut {cut}: {} held", carry.pending());
            out.push_str(&carry.push(&bytes[cut..]));
            assert_eq!(out, text, "cut at byte {cut}");
            assert_eq!(carry.pending(), 0);
        }
    }

    #[test]
    fn one_byte_at_a_time_holds_back_only_the_incomplete_character() {
        let mut carry = Utf8Carry::default();
        let mut out = String::new();
        for (i, b) in "añ€😀".as_bytes().iter().enumerate() {
            let piece = carry.push(&[*b]);
            // A piece is never half a character: it is empty or whole characters.
            assert!(piece.chars().count() <= 1, "byte {i}: {piece:?}");
            out.push_str(&piece);
        }
        assert_eq!(out, "añ€😀");
        // The four bytes of 😀: three held, then the whole character at once.
        let emoji = "😀".as_bytes();
        assert_eq!(carry.push(&emoji[..3]), "");
        assert_eq!(carry.pending(), 3);
        assert_eq!(carry.push(&emoji[3..]), "😀");
    }

    #[test]
    fn invalid_bytes_in_the_source_are_replaced_and_decoding_goes_on() {
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.push(&[0xff, b'a']), "\u{FFFD}a");
        // A character's start followed by something that cannot continue it.
        assert_eq!(carry.push(&[0xe2, 0x82]), "");
        assert_eq!(carry.push(b"b"), "\u{FFFD}b");
        assert_eq!(carry.pending(), 0);
    }
}
