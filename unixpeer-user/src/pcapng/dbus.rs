//! D-Bus over a stream socket: the SASL lines, then whole messages, which
//! Wireshark's D-Bus dissector takes one per packet (LINKTYPE_DBUS) and not
//! from TCP. This finds the message boundaries in what was sent.

/// The longest message the D-Bus specification allows.
const MAX_MESSAGE: usize = 128 << 20;
/// Bytes kept per direction while a message is incomplete: beyond this a
/// flow stops being split into messages, so memory stays bounded.
pub const MAX_BUFFERED: usize = 1 << 20;

/// The first bytes a D-Bus client sends: a NUL (for credentials), then
/// the SASL `AUTH` command, as one write or two.
pub fn is_client_start(data: &[u8]) -> bool {
    data == b"\0" || data.starts_with(b"\0AUTH")
}

/// Whether `data` starts with a plausible message header (endianness,
/// type 1-4, version 1): for a connection already past its handshake.
pub fn is_message_start(data: &[u8]) -> bool {
    data.len() >= 16 && matches!(data[0], b'l' | b'B') && (1..=4).contains(&data[1]) && data[3] == 1
}

/// The whole length of the message whose first 16 bytes `h` holds.
fn message_len(h: &[u8]) -> Option<usize> {
    let u32_at = |at: usize| {
        let b = [h[at], h[at + 1], h[at + 2], h[at + 3]];
        match h[0] {
            b'l' => Some(u32::from_le_bytes(b)),
            b'B' => Some(u32::from_be_bytes(b)),
            _ => None,
        }
    };
    let body = u32_at(4)? as usize;
    let fields = u32_at(12)? as usize;
    let len = 16usize.checked_add(fields.next_multiple_of(8))?.checked_add(body)?;
    (len <= MAX_MESSAGE).then_some(len)
}

/// One direction of a D-Bus connection.
#[derive(Debug, Default)]
pub struct Direction {
    /// Past the handshake: bytes are messages.
    pub messages: bool,
    buf: Vec<u8>,
}

/// What became of bytes handed to a direction.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// Handshake bytes (`auth`), then every whole message completed.
    Ok { auth: usize, messages: Vec<Vec<u8>> },
    /// Not D-Bus framing, or a message too large to hold: the flow is
    /// shown as plain bytes from here on.
    Lost,
}

impl Direction {
    /// A direction already past the handshake.
    pub fn in_messages() -> Self {
        Self { messages: true, buf: Vec::new() }
    }

    /// Takes the next bytes of this direction. `client` says whether it
    /// is the client's, which ends the handshake with `BEGIN`.
    pub fn push(&mut self, data: &[u8], client: bool) -> Split {
        let mut auth = 0;
        if !self.messages {
            if !client {
                // The server's lines; its messages follow the client's BEGIN.
                return Split::Ok { auth: data.len(), messages: Vec::new() };
            }
            match find_begin(data) {
                Some(end) => {
                    auth = end;
                    self.messages = true;
                }
                None => return Split::Ok { auth: data.len(), messages: Vec::new() },
            }
        }
        self.buf.extend_from_slice(&data[auth..]);
        let mut messages = Vec::new();
        while self.buf.len() >= 16 {
            let Some(len) = message_len(&self.buf) else { return Split::Lost };
            if self.buf.len() < len {
                if len > MAX_BUFFERED {
                    return Split::Lost;
                }
                break;
            }
            messages.push(self.buf.drain(..len).collect());
        }
        Split::Ok { auth, messages }
    }
}

/// The end of a `BEGIN` line in the client's handshake bytes.
fn find_begin(data: &[u8]) -> Option<usize> {
    let at = data.windows(7).position(|w| w == b"BEGIN\r\n")?;
    (at == 0 || data[at - 1] == b'\n').then_some(at + 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(serial: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![b'l', 1, 0, 1];
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(&[serial, 0, 0, 0]);
        // Header fields: 5 bytes, padded to 8.
        m.extend_from_slice(&5u32.to_le_bytes());
        m.extend_from_slice(&[1, 1, b'o', 0, 0, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn splits_the_handshake_and_whole_messages() {
        let mut client = Direction::default();
        assert!(is_client_start(b"\0"));
        assert_eq!(client.push(b"\0AUTH EXTERNAL 30\r\n", true), Split::Ok { auth: 19, messages: vec![] });
        let (m1, m2) = (message(1, b"hello"), message(2, b""));
        let mut write = b"BEGIN\r\n".to_vec();
        write.extend_from_slice(&m1);
        write.extend_from_slice(&m2[..10]);
        assert_eq!(client.push(&write, true), Split::Ok { auth: 7, messages: vec![m1] });
        assert_eq!(client.push(&m2[10..], true), Split::Ok { auth: 0, messages: vec![m2] });
    }

    #[test]
    fn the_server_talks_lines_until_the_client_begins() {
        let mut server = Direction::default();
        assert_eq!(server.push(b"OK 1234\r\n", false), Split::Ok { auth: 9, messages: vec![] });
        server.messages = true;
        let m = message(7, b"x");
        assert_eq!(server.push(&m, false), Split::Ok { auth: 0, messages: vec![m] });
    }

    #[test]
    fn garbage_and_giants_give_up() {
        let mut d = Direction::in_messages();
        assert_eq!(d.push(b"GET / HTTP/1.1\r\n\r\n", true), Split::Lost);
        let mut d = Direction::in_messages();
        let mut giant = message(1, b"");
        giant[4..8].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert_eq!(d.push(&giant, true), Split::Lost);
        assert!(is_message_start(&message(1, b"")) && !is_message_start(b"GET / HTTP/1.1\r\n"));
    }
}
