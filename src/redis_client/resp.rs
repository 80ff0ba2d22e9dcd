//! RESP framing: finds where one complete reply ends in a byte buffer, so the
//! reader can hand whole frames (`Frame`) to their callers, and reads the two
//! shapes the scripts answer (an array of arrays of strings, or one string
//! of lines of space-separated fields) straight from a frame's bytes, without
//! building a `redis::Value` tree; anything else is parsed by the redis crate
//! (`Frame::value`). Pure, no IO.

use std::ops::Range;
use std::rc::Rc;

/// One whole reply, as Redis sent it (shared: a batch's callers each read
/// their part of it).
#[derive(Clone)]
pub struct Frame(Rc<[u8]>);

impl Frame {
    /// `bytes` must be one whole frame (`frame_len` measured it).
    pub fn new(bytes: &[u8]) -> Frame {
        Frame(Rc::from(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the reply is an error (`-ERR ...`, `-NOSCRIPT ...`, `-MOVED ...`).
    pub fn is_error(&self) -> bool {
        self.0.first() == Some(&b'-')
    }

    /// The reply parsed by the redis crate, for every use but the scripts'
    /// replies.
    pub fn value(&self) -> redis::RedisResult<redis::Value> {
        redis::parse_redis_value(&self.0)
    }

    /// Where each element of an array reply lies in the frame, if it is an
    /// array.
    pub fn elements(&self) -> Option<Elements<'_>> {
        let (kind, n, pos) = header(&self.0, 0)?;
        (kind == b'*' && n >= 0).then_some(Elements {
            frame: &self.0,
            pos,
            left: n as usize,
        })
    }
}

impl Frame {
    /// Where each line (`\n`-separated) of a bulk string reply lies in the
    /// frame, if it is a bulk string.
    pub fn lines(&self) -> Option<Lines<'_>> {
        let (kind, n, pos) = header(&self.0, 0)?;
        if kind != b'$' || n < 0 {
            return None;
        }
        let text = self.0.get(pos..pos.checked_add(n as usize)?)?;
        Some(Lines {
            left: text.iter().filter(|&&b| b == b'\n').count() + 1,
            text,
            start: pos,
        })
    }
}

/// The lines of a bulk string frame, each as its range in the frame.
pub struct Lines<'a> {
    text: &'a [u8],
    /// Where `text` starts in the frame.
    start: usize,
    left: usize,
}

impl Lines<'_> {
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Iterator for Lines<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let len = self
            .text
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.text.len());
        let line = self.start..self.start + len;
        let skip = (len + 1).min(self.text.len());
        self.text = &self.text[skip..];
        self.start += skip;
        Some(line)
    }
}

/// Reads a line of space-separated fields into `out`, each as text; returns
/// how many there were. `None` for text that is not UTF-8 or more fields
/// than `out` holds.
pub fn fields<'a>(line: &'a [u8], out: &mut [&'a str]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let mut n = 0;
    for field in text.split(' ') {
        *out.get_mut(n)? = field;
        n += 1;
    }
    Some(n)
}

/// The elements of an array frame, each as the range of its own frame.
pub struct Elements<'a> {
    frame: &'a [u8],
    pos: usize,
    left: usize,
}

impl Elements<'_> {
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Iterator for Elements<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.left == 0 {
            return None;
        }
        let len = frame_len(&self.frame[self.pos..]).ok()??;
        self.left -= 1;
        let start = self.pos;
        self.pos += len;
        Some(start..self.pos)
    }
}

/// Reads an array of strings (bulk or simple) into `out`, each as text;
/// returns how many there were. `None` for any other shape, a string that
/// is not UTF-8, or more elements than `out` holds.
pub fn texts<'a>(frame: &'a [u8], out: &mut [&'a str]) -> Option<usize> {
    let (kind, n, mut pos) = header(frame, 0)?;
    if kind != b'*' || n < 0 || n as usize > out.len() {
        return None;
    }
    let n = n as usize;
    for slot in out.iter_mut().take(n) {
        let (kind, len, next) = header(frame, pos)?;
        let bytes = match kind {
            b'$' if len >= 0 => {
                let end = next.checked_add(len as usize)?;
                let bytes = frame.get(next..end)?;
                pos = end + 2;
                bytes
            }
            // A simple string's text is its line, after the type byte.
            b'+' => {
                let bytes = &frame[pos + 1..next - 2];
                pos = next;
                bytes
            }
            _ => return None,
        };
        *slot = std::str::from_utf8(bytes).ok()?;
    }
    Some(n)
}

/// The type byte, the number on the line (0 for a simple string) and where
/// the next line starts, for the frame starting at `pos`.
fn header(buf: &[u8], pos: usize) -> Option<(u8, i64, usize)> {
    let end = find_crlf(buf, pos)?;
    let kind = buf[pos];
    let n = match kind {
        b'*' | b'$' => parse_len(&buf[pos + 1..end]).ok()?,
        _ => 0,
    };
    Some((kind, n, end + 2))
}

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
    fn script_replies_read_without_a_value_tree() {
        let bytes = b"*2\r\n*3\r\n$2\r\nok\r\n$4\r\n1-ab\r\n$0\r\n\r\n*1\r\n+fenced\r\n";
        let frame = Frame::new(bytes);
        assert!(!frame.is_error());
        let elements: Vec<_> = frame.elements().unwrap().collect();
        assert_eq!(elements.len(), 2);
        let mut out = [""; 3];
        assert_eq!(texts(&bytes[elements[0].clone()], &mut out), Some(3));
        assert_eq!(out, ["ok", "1-ab", ""]);
        assert_eq!(texts(&bytes[elements[1].clone()], &mut out), Some(1));
        assert_eq!(out[0], "fenced");
        // Too many for `out`, not an array, not strings: not read.
        assert_eq!(texts(&bytes[elements[0].clone()], &mut [""; 2]), None);
        assert_eq!(texts(b"$2\r\nok\r\n", &mut out), None);
        assert_eq!(texts(b"*1\r\n:1\r\n", &mut out), None);
        assert_eq!(texts(b"*1\r\n$2\r\n\xff\xfe\r\n", &mut out), None);
        assert!(Frame::new(b"-NOSCRIPT x\r\n").is_error());
        assert!(Frame::new(b":1\r\n").elements().is_none());
    }

    #[test]
    fn line_replies_read_in_place() {
        let bytes = b"$34\r\nok 1-2-ab 7,8\nsold  \nlimit 1-3-cd \r\n";
        let frame = Frame::new(bytes);
        assert_eq!(frame_len(bytes), Ok(Some(bytes.len())));
        let lines: Vec<_> = frame.lines().unwrap().collect();
        assert_eq!(frame.lines().unwrap().len(), 3);
        let mut out = [""; 3];
        let read: Vec<_> = lines
            .iter()
            .map(|r| {
                let n = fields(&bytes[r.clone()], &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect();
        assert_eq!(
            read,
            [
                vec!["ok", "1-2-ab", "7,8"],
                vec!["sold", "", ""],
                vec!["limit", "1-3-cd", ""]
            ]
        );
        let one = b"$7\r\nfenced \r\n";
        let frame = Frame::new(one);
        let mut lines = frame.lines().unwrap();
        assert_eq!(lines.next(), Some(4..11));
        assert_eq!(lines.next(), None);
        assert_eq!(fields(&one[4..11], &mut out), Some(2));
        assert_eq!(out[..2], ["fenced", ""]);
        // More fields than `out` holds, not a bulk string: not read.
        assert_eq!(fields(b"a b c d", &mut out), None);
        assert!(Frame::new(b"*1\r\n$2\r\nok\r\n").lines().is_none());
        assert!(Frame::new(b"$-1\r\n").lines().is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(frame_len(b"?what\r\n").is_err());
        assert!(frame_len(b"$abc\r\n").is_err());
        assert!(frame_len(b"$3\r\nabcXY").is_err());
    }
}
