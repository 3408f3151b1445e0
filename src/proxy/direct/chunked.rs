//! Chunked transfer coding (RFC 9112 §7.1) as the direct transport relays
//! it: read byte for byte as it passes, the end found without decoding,
//! extensions dropped and bare line ends refused exactly as pingora's
//! parser refuses them.

/// Where a chunked body at the start of `buf` ends (`Ok(None)`: not in
/// `buf`), as the relay finds it; for the fuzzer, which feeds it in
/// pieces too.
pub fn chunked_end(buf: &[u8], piece: usize) -> std::result::Result<Option<usize>, &'static str> {
    let mut c = Chunked::default();
    let mut at = 0;
    let mut out = Vec::new();
    for part in buf.chunks(piece.max(1)) {
        let used = c.advance(part, &mut out)?;
        if used > part.len() {
            return Err("advanced past its input");
        }
        at += used;
        if c.done() {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Where a chunked body (RFC 9112 §7.1) is, read byte for byte as it
/// passes through, and its framing as the client gets it: chunk
/// extensions dropped (as pingora's re-encoding does); a line end that is
/// not `CRLF` (a bare `LF` or `CR`) refused, as pingora's parser refuses
/// it, since a client or a proxy in front could frame such a body
/// otherwise than the gateway did. Chunk data and trailer fields pass
/// unchanged.
/// Why a chunked body with a bare `LF` line end is refused.
const BARE_LF: &str = "bare LF in chunked framing";

#[derive(Clone, Copy, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    /// The chunk size being read, or the data left in the chunk.
    n: u64,
    /// Hex digits seen in the size being read.
    digits: bool,
    /// The previous byte of a size, extension or trailer line was `CR`.
    cr: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// In the hex digits of a chunk size.
    #[default]
    Size,
    /// After the size: extensions, up to the line's end.
    Ext,
    Data,
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// The LF of the final empty line.
    EndLf,
    /// Inside a trailer field line.
    Trailer,
    Done,
}

impl Chunked {
    pub(super) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Moves over `buf`, writing the body's bytes as the client gets them
    /// to `out`; how many of `buf`'s bytes belong to the body (all of
    /// them, or up to the end).
    pub(super) fn advance(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<usize, &'static str> {
        let mut i = 0;
        while i < buf.len() && self.state != ChunkState::Done {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if self.n >> 60 != 0 {
                            return Err("chunk size too large");
                        }
                        self.n = self.n * 16 + d;
                        self.digits = true;
                        out.push(b);
                    }
                    _ if !self.digits => return Err("invalid chunk size"),
                    b'\r' => {
                        self.cr = true;
                        self.state = ChunkState::Ext;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\n' => return Err(BARE_LF),
                    _ => return Err("invalid chunk size"),
                },
                ChunkState::Ext => match b {
                    b'\n' if self.cr => self.line_end(out),
                    b'\n' => return Err(BARE_LF),
                    _ if self.cr => return Err("bare CR in a chunk size line"),
                    b'\r' => self.cr = true,
                    _ => {}
                },
                ChunkState::Data => {
                    let take = (buf.len() - i).min(self.n as usize);
                    out.extend_from_slice(&buf[i..i + take]);
                    self.n -= take as u64;
                    i += take;
                    if self.n == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => return Err(BARE_LF),
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::DataLf => match b {
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.state = ChunkState::Size;
                    }
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Err(BARE_LF),
                    _ => {
                        out.push(b);
                        self.state = ChunkState::Trailer;
                    }
                },
                ChunkState::EndLf => match b {
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.state = ChunkState::Done;
                    }
                    _ => return Err("invalid end of chunked body"),
                },
                ChunkState::Trailer => match b {
                    b'\n' if !self.cr => return Err(BARE_LF),
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.cr = false;
                        self.state = ChunkState::TrailerStart;
                    }
                    _ if self.cr => return Err("bare CR in a trailer field"),
                    b'\r' => self.cr = true,
                    _ => out.push(b),
                },
                ChunkState::Done => {}
            }
            i += 1;
        }
        Ok(i)
    }

    /// The end of a chunk-size line (written `CRLF`): data follows, or the
    /// trailers.
    fn line_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.digits = false;
        self.cr = false;
        self.state = if self.n == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    /// Feeds `body` in pieces of every size; the end must be found at the
    /// same byte each time.
    fn end_of(body: &[u8]) -> Result<usize, &'static str> {
        let mut first = None;
        for step in 1..=body.len().max(1) {
            let mut c = Chunked::default();
            let mut at = 0;
            while at < body.len() && !c.done() {
                let piece = &body[at..(at + step).min(body.len())];
                at += c.advance(piece, &mut Vec::new())?;
            }
            let end = if c.done() { at } else { usize::MAX };
            match first {
                None => first = Some(end),
                Some(f) => assert_eq!(f, end, "step {step}"),
            }
        }
        Ok(first.unwrap_or(usize::MAX))
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let b = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(b), Ok(b.len() - 4));
        let t = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        assert_eq!(end_of(t), Ok(t.len() - 4));
        let unfinished = b"5\r\nhello\r\n0\r\n";
        assert_eq!(end_of(unfinished), Ok(usize::MAX));
        assert!(end_of(b"5\r\nhello!!\r\n0\r\n\r\n").is_err());
        assert!(end_of(b"zz\r\n").is_err());
        assert!(end_of(b"fffffffffffffffff\r\n").is_err());
    }

    /// Chunk extensions are dropped, data and trailers pass unchanged, in
    /// any split of the bytes; a line end other than CRLF is refused.
    #[test]
    fn chunked_framing_is_relayed_with_crlf_only() {
        let cases: [(&[u8], &[u8]); 3] = [
            (
                b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
                b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            ),
            (b"3\r\na\nb\r\n0\r\n\r\n", b"3\r\na\nb\r\n0\r\n\r\n"),
            (b"0\r\n\r\n", b"0\r\n\r\n"),
        ];
        for (input, want) in cases {
            for step in 1..=input.len() {
                let mut c = Chunked::default();
                let mut out = Vec::new();
                for piece in input.chunks(step) {
                    c.advance(piece, &mut out).unwrap();
                }
                assert!(c.done());
                assert_eq!(out, want, "step {step}");
            }
        }
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;x\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-T: 1\n\r\n",
            b"5\rX\nhello",
            b"0\r\nX-T: a\rb\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(
                c.advance(bad, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
