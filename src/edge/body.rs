//! A message body read by its framing, the same way on both HTTP/1 sessions (the client's
//! request body in `edge::client_h1`, the backend's response body in `edge::upstream_h1`):
//! a Content-Length, chunks (`edge::chunked`), or bytes until the peer closes.

use bytes::BytesMut;

use crate::edge::chunked::{ChunkedDecoder, Step};

/// Where a body stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BodyFraming {
    /// Bytes still to come of a Content-Length body.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Ends when the peer closes (no length, not chunked; or an upgraded connection).
    UntilClose,
    /// The body is complete.
    Done,
}

impl BodyFraming {
    /// The next piece of the body out of `buf`: `NeedMore` asks the caller to read into `buf`
    /// and, when the peer has closed instead, to call `peer_closed`. An error is malformed
    /// chunk framing.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        match self {
            BodyFraming::Done => Ok(Step::End),
            BodyFraming::Length(0) => {
                *self = BodyFraming::Done;
                Ok(Step::End)
            }
            BodyFraming::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (buf.len() as u64).min(*left);
                *left -= n;
                if *left == 0 {
                    *self = BodyFraming::Done;
                }
                Ok(Step::Data(buf.split_to(n as usize).freeze()))
            }
            BodyFraming::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                Ok(Step::Data(buf.split().freeze()))
            }
            BodyFraming::Chunked(decoder) => {
                let step = decoder.step(buf)?;
                if step == Step::End {
                    *self = BodyFraming::Done;
                }
                Ok(step)
            }
        }
    }

    /// The peer closed where `next` wanted more: `true` when that ends the body (until-close
    /// framing), `false` when it cuts the body short.
    pub fn peer_closed(&mut self) -> bool {
        if *self == BodyFraming::UntilClose {
            *self = BodyFraming::Done;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(framing: &mut BodyFraming, buf: &mut BytesMut) -> (Vec<u8>, Step) {
        let mut body = Vec::new();
        loop {
            match framing.next(buf).unwrap() {
                Step::Data(piece) => body.extend_from_slice(&piece),
                other => return (body, other),
            }
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_what_follows() {
        let mut f = BodyFraming::Length(5);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(drain(&mut f, &mut buf), (b"hel".to_vec(), Step::NeedMore));
        buf.extend_from_slice(b"loGET /");
        assert_eq!(drain(&mut f, &mut buf), (b"lo".to_vec(), Step::End));
        assert_eq!(&buf[..], b"GET /");
        assert!(!BodyFraming::Length(1).peer_closed(), "a cut length body");
    }

    #[test]
    fn an_until_close_body_ends_when_the_peer_closes() {
        let mut f = BodyFraming::UntilClose;
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(drain(&mut f, &mut buf), (b"abc".to_vec(), Step::NeedMore));
        assert!(f.peer_closed());
        assert_eq!(f.next(&mut buf).unwrap(), Step::End);
    }

    #[test]
    fn a_chunked_body_is_decoded_and_ends_done() {
        let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nnext"[..]);
        assert_eq!(drain(&mut f, &mut buf), (b"abc".to_vec(), Step::End));
        assert_eq!(f, BodyFraming::Done);
        assert_eq!(&buf[..], b"next");
        assert!(!BodyFraming::Chunked(ChunkedDecoder::default()).peer_closed());
    }
}
