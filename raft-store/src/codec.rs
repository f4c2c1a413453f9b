//! One binary encoding for everything stored or sent: postcard (compact,
//! serde-based, stable wire format).

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
#[error("encoding: {0}")]
pub struct CodecError(#[from] postcard::Error);

/// Room for a typical record or message, so encoding rarely reallocates.
const INITIAL_CAPACITY: usize = 256;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_extend(
        value,
        Vec::with_capacity(INITIAL_CAPACITY),
    )?)
}

/// `prefix` followed by the encoding of `value`, in one buffer.
pub fn encode_after<T: Serialize + ?Sized>(prefix: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(INITIAL_CAPACITY);
    buf.push(prefix);
    Ok(postcard::to_extend(value, buf)?)
}

/// Encodes `value` into `buf`, replacing what it held but keeping its
/// capacity: encoding many values, one buffer grows once.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    buf.clear();
    *buf = postcard::to_extend(value, std::mem::take(buf))?;
    Ok(())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(bytes)?)
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
