//! The chunked transfer coding (RFC 9112 §7.1), encoded, and decoded strictly from the front of a read
//! buffer: for request bodies from clients and response bodies from backends alike.
//!
//! Strict: hex sizes of at most 15 digits, extensions of visible characters only, CRLF line
//! ends (a bare LF is refused: it is how request smuggling splits a message two ways), chunk
//! data followed by exactly CRLF, trailer fields that are well-formed `name: value` lines,
//! bounded line and trailer sizes. Trailers are checked and dropped, as nginx does.

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size line (size and extensions) or one trailer line may be this long.
const MAX_LINE: usize = 4096;
/// All trailer lines together may be this long.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to the empty line; the bytes of trailers so far.
    Trailers(usize),
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The last chunk and the trailers are consumed: the body has ended.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `buf`, consuming what it uses; bytes after the body's end
    /// stay in `buf` (a pipelined request, say).
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let piece = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(piece));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&c| c != b'\r') {
                            return Err("chunk data longer than its size");
                        }
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data longer than its size");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Size => {
                    let Some(end) = find_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = parse_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Trailers(seen) => {
                    let Some(end) = find_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    if end == 0 {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Step::End);
                    }
                    if !valid_field_line(&buf[..end]) {
                        return Err("malformed trailer field");
                    }
                    let seen = seen + end + 2;
                    if seen > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    buf.advance(end + 2);
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// `data` as one chunk of a chunked body: its size line, the data, CRLF.
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut chunk = Vec::with_capacity(data.len() + 20);
    let _ = write!(chunk, "{:X}\r\n", data.len());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// The length of the first line in `buf` (without its CRLF); `None` while incomplete. A
/// bare LF, or a line longer than `MAX_LINE`, is an error.
fn find_line(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|&c| c == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err("bare LF in a chunked body"),
        None if buf.len() > MAX_LINE => Err("chunk-size or trailer line too long"),
        None => Ok(None),
    }
}

/// A chunk-size line: 1 to 15 hex digits (below u64::MAX), then optional `;extensions` of
/// visible characters, spaces and tabs.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .iter()
        .position(|c| !c.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 15 {
        return Err("invalid chunk size");
    }
    let ext = &line[digits..];
    let ext_ok = ext.is_empty()
        || (ext.trim_ascii_start().first() == Some(&b';')
            && ext.iter().all(|&c| c == b'\t' || (b' '..0x7f).contains(&c)));
    if !ext_ok {
        return Err("invalid chunk extension");
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).expect("a hex digit"))
    }))
}

/// `name: value` with a token name (RFC 9110 §5.6.2) and a value without control
/// characters other than tab.
fn valid_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&c| c == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&c| is_tchar(c))
        && value
            .iter()
            .all(|&c| c == b'\t' || (c >= b' ' && c != 0x7f))
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(wire: &[u8]) -> Result<(Vec<u8>, BytesMut), &'static str> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(wire);
        let mut body = Vec::new();
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::NeedMore => return Err("incomplete"),
                Step::End => return Ok((body, buf)),
            }
        }
    }

    #[test]
    fn decodes_and_leaves_what_follows() {
        let (body, rest) =
            decode(b"3\r\nabc\r\na;x=1\r\n0123456789\r\n0\r\nT: v\r\n\r\nGET /").unwrap();
        assert_eq!(body, b"abc0123456789");
        assert_eq!(&rest[..], b"GET /");
    }

    #[test]
    fn refuses_what_smuggling_relies_on() {
        for bad in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"5;\x00\r\nabcde\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"0\r\nX Bad: v\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nT: a\x00b\r\n\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn waits_for_split_lines() {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"1"[..]);
        assert_eq!(d.step(&mut buf), Ok(Step::NeedMore));
        buf.extend_from_slice(b"\r");
        assert_eq!(d.step(&mut buf), Ok(Step::NeedMore));
        buf.extend_from_slice(b"\nx\r");
        assert_eq!(d.step(&mut buf), Ok(Step::Data(Bytes::from_static(b"x"))));
        assert_eq!(d.step(&mut buf), Ok(Step::NeedMore));
        buf.extend_from_slice(b"\n0\r\n\r\n");
        assert_eq!(d.step(&mut buf), Ok(Step::End));
        assert!(d.is_done());
    }
}
