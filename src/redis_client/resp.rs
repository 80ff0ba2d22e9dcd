//! RESP framing: finds where one complete reply ends in a byte buffer, so the
//! reader can hand whole frames to `redis::parse_redis_value` (the redis crate
//! parses; this module only measures). Pure, no IO.

/// The buffer does not hold a well-formed RESP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed RESP: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Length of the first complete frame in `buf`, `None` if more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut pos = 0;
    // Frames still to read at the current position; aggregates add to it.
    let mut remaining: u64 = 1;
    while remaining > 0 {
        remaining -= 1;
        let Some(line_end) = find_crlf(buf, pos) else {
            return Ok(None);
        };
        let kind = buf[pos];
        let line = &buf[pos + 1..line_end];
        pos = line_end + 2;
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = parse_len(line)?;
                if len >= 0 {
                    let end = pos + len as usize + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(FrameError("blob without CRLF"));
                    }
                    pos = end;
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_len(line)?;
                if n > 0 {
                    remaining += n as u64;
                }
            }
            b'%' | b'|' => {
                let n = parse_len(line)?;
                if n > 0 {
                    remaining += 2 * n as u64;
                }
            }
            _ => return Err(FrameError("unknown type byte")),
        }
    }
    Ok(Some(pos))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

fn parse_len(line: &[u8]) -> Result<i64, FrameError> {
    let text = std::str::from_utf8(line).map_err(|_| FrameError("length not ASCII"))?;
    let n: i64 = text
        .parse()
        .map_err(|_| FrameError("length not a number"))?;
    if !(-1..=512 * 1024 * 1024).contains(&n) {
        return Err(FrameError("length out of range"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_frames() {
        assert_eq!(frame_len(b"+OK\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b":12\r\n+OK\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"-NOSCRIPT x\r\n"), Ok(Some(13)));
        assert_eq!(frame_len(b"$3\r\nabc\r\n"), Ok(Some(9)));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
    }

    #[test]
    fn nested_arrays() {
        let frame = b"*3\r\n$2\r\nok\r\n*2\r\n:1\r\n$0\r\n\r\n+x\r\n";
        assert_eq!(frame_len(frame), Ok(Some(frame.len())));
        let mut two = frame.to_vec();
        two.extend_from_slice(b"+next\r\n");
        assert_eq!(frame_len(&two), Ok(Some(frame.len())));
    }

    #[test]
    fn incomplete_frames_need_more() {
        let frame = b"*3\r\n$2\r\nok\r\n*2\r\n:1\r\n$0\r\n\r\n+x\r\n";
        for cut in 0..frame.len() {
            assert_eq!(frame_len(&frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(frame_len(b"?what\r\n").is_err());
        assert!(frame_len(b"$abc\r\n").is_err());
        assert!(frame_len(b"$3\r\nabcXY").is_err());
    }
}
