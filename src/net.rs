//! Owned-buffer reads that append: monoio reads a `Vec<u8>` from its start,
//! so a reader that keeps a partial message must hand it the free tail
//! instead. One place for that, used by the HTTP connections and the Redis
//! client.

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncReadRent;

/// Reads into the spare capacity after `buf`'s bytes (reserving `min_free`
/// first if there is less room); returns the count read and the buffer, whose
/// length then includes the new bytes.
pub async fn read_append<R: AsyncReadRent>(
    reader: &mut R,
    mut buf: Vec<u8>,
    min_free: usize,
) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_free {
        buf.reserve(min_free);
    }
    let start = buf.len();
    let tail: SliceMut<Vec<u8>> = buf.slice_mut(start..);
    let (result, tail) = reader.read(tail).await;
    (result, tail.into_inner())
}
