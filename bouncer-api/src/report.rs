//! The report frame (`PROTOCOL.md` section 3.3): counts of the lookups a client
//! answered itself from the mapped snapshot, sent in batches so the daemon's metrics
//! and usage reports stay right. Kept apart from [`crate::Request`] (a small `Copy`
//! value on the lookup path): a server takes report frames off its input first.

use crate::codec::{truncate_utf8, HEADER_LEN, LEN_PREFIX, MAX_FRAME_LEN, VERSION};
use crate::{FrameError, Remediation};
use bytes::{Buf, BufMut, BytesMut};

/// Kind byte of a report request; it is answered by a pong with the same id.
pub const KIND_REPORT: u8 = 0x03;

/// One line of a report: `count` lookups answered `remediation` (with `flags` as in a
/// lookup answer) by the decision of `origin` / `scenario` / `type_name` (empty for
/// allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEntry<'a> {
    pub remediation: Remediation,
    pub flags: u8,
    pub count: u32,
    pub origin: &'a str,
    pub scenario: &'a str,
    pub type_name: &'a str,
}

/// When the next complete frame in `input` is a report, removes it and returns it whole.
pub fn take_report(input: &mut BytesMut) -> Option<BytesMut> {
    if input.len() < LEN_PREFIX + HEADER_LEN || input[3] != KIND_REPORT || input[2] != VERSION {
        return None;
    }
    let len = LEN_PREFIX + usize::from(u16::from_be_bytes([input[0], input[1]]));
    if len > MAX_FRAME_LEN || input.len() < len {
        return None; // a bad length is the ordinary decoder's to report
    }
    Some(input.split_to(len))
}

/// The id and entries of a report frame (as returned by [`take_report`]).
pub fn parse_report(frame: &[u8]) -> Result<(u32, Vec<ReportEntry<'_>>), FrameError> {
    let id = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let truncated = FrameError::Truncated {
        id,
        kind: KIND_REPORT,
    };
    let mut p = &frame[LEN_PREFIX + HEADER_LEN..];
    let mut out = Vec::new();
    while !p.is_empty() {
        if p.len() < 6 {
            return Err(truncated.clone());
        }
        let remediation = Remediation::from_u8(p[0]).ok_or(FrameError::BadValue {
            id,
            field: "remediation",
            value: p[0],
        })?;
        let flags = p[1];
        let count = (&p[2..6]).get_u32();
        p = &p[6..];
        let origin = text(&mut p, id, "origin")?;
        let scenario = text(&mut p, id, "scenario")?;
        let type_name = text(&mut p, id, "type")?;
        out.push(ReportEntry {
            remediation,
            flags,
            count,
            origin,
            scenario,
            type_name,
        });
    }
    Ok((id, out))
}

/// A u8-length string at the front of `p`, which then moves past it.
fn text<'a>(p: &mut &'a [u8], id: u32, field: &'static str) -> Result<&'a str, FrameError> {
    let truncated = FrameError::Truncated {
        id,
        kind: KIND_REPORT,
    };
    let n = usize::from(*p.first().ok_or(truncated.clone())?);
    if p.len() < 1 + n {
        return Err(truncated);
    }
    let s = std::str::from_utf8(&p[1..1 + n]).map_err(|_| FrameError::BadUtf8 { id, field })?;
    *p = &p[1 + n..];
    Ok(s)
}

/// Appends report frames for `entries` to `out` (as many frames as needed, each at
/// most 1024 bytes, ids from `first_id` up); returns the number of frames. Strings are
/// cut to 255 bytes on a character boundary.
pub fn encode_report(first_id: u32, entries: &[ReportEntry<'_>], out: &mut BytesMut) -> u32 {
    let mut frames = 0;
    let mut start = None;
    for e in entries {
        let (o, s, t) = (
            truncate_utf8(e.origin, 255),
            truncate_utf8(e.scenario, 255),
            truncate_utf8(e.type_name, 255),
        );
        let need = 6 + 3 + o.len() + s.len() + t.len();
        if start.is_some_and(|st| out.len() - st + need > MAX_FRAME_LEN) {
            finish(out, start.take().unwrap());
        }
        if start.is_none() {
            start = Some(out.len());
            out.put_u16(0);
            out.put_u8(VERSION);
            out.put_u8(KIND_REPORT);
            out.put_u32(first_id.wrapping_add(frames));
            frames += 1;
        }
        out.put_u8(e.remediation as u8);
        out.put_u8(e.flags);
        out.put_u32(e.count);
        for f in [o, s, t] {
            out.put_u8(f.len() as u8);
            out.put_slice(f.as_bytes());
        }
    }
    if let Some(st) = start {
        finish(out, st);
    }
    frames
}

fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - LEN_PREFIX) as u16;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> ReportEntry<'static> {
        ReportEntry {
            remediation: Remediation::Ban,
            flags: 0,
            count: i,
            origin: "crowdsec",
            scenario: "crowdsecurity/ssh-bf",
            type_name: "ban",
        }
    }

    #[test]
    fn round_trip_in_several_frames() {
        let entries: Vec<_> = (1..200).map(entry).collect();
        let mut out = BytesMut::new();
        let frames = encode_report(7, &entries, &mut out);
        assert!(frames > 1);
        let mut got = Vec::new();
        let mut ids = Vec::new();
        while let Some(frame) = take_report(&mut out) {
            assert!(frame.len() <= MAX_FRAME_LEN);
            let (id, list) = parse_report(&frame).unwrap();
            ids.push(id);
            got.extend(list.into_iter().map(|e| e.count));
        }
        assert!(out.is_empty());
        assert_eq!(got, (1..200).collect::<Vec<_>>());
        assert_eq!(ids, (7..7 + frames).collect::<Vec<_>>());
    }

    /// The example of PROTOCOL.md section 3.3.
    #[test]
    fn protocol_example() {
        let entries = [
            ReportEntry {
                remediation: Remediation::Allow,
                flags: 0,
                count: 1000,
                origin: "",
                scenario: "",
                type_name: "",
            },
            ReportEntry {
                remediation: Remediation::Ban,
                flags: 0,
                count: 3,
                origin: "cscli",
                scenario: "manual",
                type_name: "ban",
            },
        ];
        let mut out = BytesMut::new();
        encode_report(9, &entries, &mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        let want = "0026010300000009" // header
            .to_string()
            + "0000000003e8000000" // 1000 allow
            + "010000000003056373636c69066d616e75616c0362616e"; // 3 ban by cscli/manual
        assert_eq!(hex, want);
    }

    #[test]
    fn damaged_reports_are_refused() {
        let mut out = BytesMut::new();
        encode_report(1, &[entry(3)], &mut out);
        let frame = out.to_vec();
        let mut cut = frame.clone();
        cut.truncate(frame.len() - 2);
        let declared = (cut.len() - 2) as u16;
        cut[0..2].copy_from_slice(&declared.to_be_bytes());
        assert!(matches!(
            parse_report(&cut),
            Err(FrameError::Truncated { id: 1, .. })
        ));
        let mut bad = frame.clone();
        bad[8] = 9;
        assert!(matches!(
            parse_report(&bad),
            Err(FrameError::BadValue {
                field: "remediation",
                ..
            })
        ));
        let mut bad = frame;
        bad[15] = 0xff; // inside "crowdsec"
        assert!(matches!(
            parse_report(&bad),
            Err(FrameError::BadUtf8 {
                field: "origin",
                ..
            })
        ));
        let mut lookup = BytesMut::from(&[0u8, 11, 1, 1, 0, 0, 0, 1, 4, 192, 0, 2, 1][..]);
        assert!(
            take_report(&mut lookup).is_none(),
            "a lookup is not a report"
        );
    }
}
