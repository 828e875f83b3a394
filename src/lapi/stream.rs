//! Streaming parse of `{"new": [...], "deleted": [...]}`: each decision is handed to a
//! callback as soon as it is read, so a startup answer of hundreds of MB is never held
//! whole, neither as bytes nor as a parsed tree. `null` lists (LAPI 1.4.6) are empty lists.
//! An object without `new` (a proxy's `{}`, a 200 error object `{"message": ...}`) is not a
//! decision answer: it fails, so that it can never stand for "LAPI holds nothing".

use crate::decision::RawDecision;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    New,
    Deleted,
}

/// How many entries each list had.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub new: usize,
    pub deleted: usize,
}

/// Parses a stream body from `reader`, calling `f` for each decision in order.
pub fn parse<R: Read>(
    reader: R,
    mut f: impl FnMut(List, RawDecision),
) -> serde_json::Result<Counts> {
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
        256 * 1024,
        reader,
    ));
    let counts = de.deserialize_map(Body { f: &mut f })?;
    de.end()?;
    Ok(counts)
}

struct Body<'f, F> {
    f: &'f mut F,
}

impl<'de, F: FnMut(List, RawDecision)> Visitor<'de> for Body<'_, F> {
    type Value = Counts;

    fn expecting(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.write_str("an object with `new` and `deleted` lists")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
        let mut counts = Counts::default();
        let mut has_new = false;
        let mut message = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "new" => {
                    has_new = true;
                    counts.new += map.next_value_seed(ListSeed {
                        list: List::New,
                        f: &mut *self.f,
                    })?
                }
                "deleted" => {
                    counts.deleted += map.next_value_seed(ListSeed {
                        list: List::Deleted,
                        f: &mut *self.f,
                    })?
                }
                "message" if message.is_none() => {
                    message = map.next_value::<Option<String>>().ok().flatten();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !has_new {
            return Err(serde::de::Error::custom(match message {
                Some(m) => format!(
                    "no `new` list (LAPI said {:?})",
                    m.chars().take(200).collect::<String>()
                ),
                None => "no `new` list".to_string(),
            }));
        }
        Ok(counts)
    }
}

struct ListSeed<'f, F> {
    list: List,
    f: &'f mut F,
}

impl<'de, F: FnMut(List, RawDecision)> DeserializeSeed<'de> for ListSeed<'_, F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, F: FnMut(List, RawDecision)> Visitor<'de> for ListSeed<'_, F> {
    type Value = usize;

    fn expecting(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.write_str("a list of decisions or null")
    }

    fn visit_none<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(raw) = seq.next_element::<RawDecision>()? {
            (self.f)(self.list, raw);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Vec<(List, Option<i64>)>;

    fn run(body: &str) -> serde_json::Result<(Counts, Seen)> {
        let mut seen = Vec::new();
        let counts = parse(body.as_bytes(), |l, d| seen.push((l, d.id)))?;
        Ok((counts, seen))
    }

    #[test]
    fn null_lists_and_order() {
        let (c, seen) = run(r#"{"new": null, "deleted": null}"#).unwrap();
        assert_eq!(c, Counts::default());
        assert!(seen.is_empty());
        let (c, seen) = run(
            r#"{"deleted":[{"id":1,"value":"1.2.3.4","scope":"Ip","duration":"-1m3s","type":"ban"}],
                "new":[{"id":2,"value":"::1","scope":"ip","duration":"1h","type":"ban","origin":"cscli","scenario":"x","uuid":"u","simulated":false}],
                "extra": {"a": [1, 2]}}"#,
        )
        .unwrap();
        assert_eq!(c, Counts { new: 1, deleted: 1 });
        assert_eq!(seen, vec![(List::Deleted, Some(1)), (List::New, Some(2))]);
    }

    #[test]
    fn an_object_without_new_is_no_answer() {
        for body in [
            "{}",
            r#"{"deleted": []}"#,
            r#"{"message": "x"}"#,
            r#"{"new2": []}"#,
        ] {
            let err = run(body).unwrap_err();
            assert!(err.to_string().contains("no `new` list"), "{body}: {err}");
        }
        let err = run(r#"{"message": "db error"}"#).unwrap_err();
        assert!(err.to_string().contains("db error"), "{err}");
        assert_eq!(run(r#"{"new": []}"#).unwrap().0, Counts::default());
    }

    #[test]
    fn invalid_bodies_fail() {
        for body in [
            "",
            "[]",
            "null",
            r#"{"new": [{"id": 1}"#,
            r#"{"new": [{"id": "x"}]}"#,
            r#"{"new": 5}"#,
            r#"{"new": []} trailing"#,
            "<html>502 Bad Gateway</html>",
        ] {
            assert!(run(body).is_err(), "{body:?} should fail");
        }
        let err = run(r#"{"new": [{"id": 1, "value": "1.2"#).unwrap_err();
        assert!(err.is_eof(), "truncation is EOF: {err}");
    }
}
