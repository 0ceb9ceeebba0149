//! The change-log record both the ZooKeeper and the Consul stores append with every write, so
//! their watches can replay every change (those servers only say *that* something changed).

use vamp_core::kv::KeyPath;

/// A log record: op (`p` or `d`), key length (u32, big endian), key, value.
pub(crate) fn log_record(op: u8, key: &KeyPath, value: &[u8]) -> Vec<u8> {
    let k = key.as_str().as_bytes();
    let mut out = Vec::with_capacity(5 + k.len() + value.len());
    out.push(op);
    out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(value);
    out
}

pub(crate) fn parse_log_record(data: &[u8]) -> Option<(u8, KeyPath, &[u8])> {
    let op = *data.first()?;
    let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
    let key = KeyPath::parse(std::str::from_utf8(data.get(5..5 + len)?).ok()?).ok()?;
    Some((op, key, data.get(5 + len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip() {
        let key = KeyPath::parse("/a/b").unwrap();
        let r = log_record(b'p', &key, b"value\0with nul");
        assert_eq!(
            parse_log_record(&r),
            Some((b'p', key.clone(), &b"value\0with nul"[..]))
        );
        let r = log_record(b'd', &key, &[]);
        assert_eq!(parse_log_record(&r), Some((b'd', key, &[][..])));
        assert_eq!(parse_log_record(&[b'p', 0, 0, 0, 9, b'/']), None);
    }
}
