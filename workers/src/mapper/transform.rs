//! Transforms a mapper applies to each object of a chunk. An object a transform rejects is
//! set aside with the reason; the rest of the chunk goes on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::jq::Jq;
use crate::{
    config::{MapperArgs, TransformKind},
    protocol::RawChunk,
};

pub enum Transform {
    Fullname,
    Jq(Jq),
}

impl Transform {
    pub fn from_args(args: &MapperArgs) -> Result<Transform, String> {
        match (args.transform, &args.jq) {
            (TransformKind::Fullname, _) => Ok(Transform::Fullname),
            (TransformKind::Jq, Some(code)) => Jq::new(code).map(Transform::Jq),
            (TransformKind::Jq, None) => {
                Err("--transform jq needs an expression: set --jq or NATSFLOW_JQ".into())
            }
        }
    }
}

/// One object the transform could not map.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub position: usize,
    pub reason: String,
    pub object: String,
}

/// The `saver_data` payload, and what was left out of it.
pub struct Mapped {
    pub payload: Vec<u8>,
    pub objects: usize,
    pub rejected: Vec<Rejected>,
}

pub fn map_chunk(transform: &Transform, chunk: &RawChunk<'_>) -> Mapped {
    let mut payload = Vec::with_capacity(64 + chunk.data.len() * 64);
    payload.extend_from_slice(format!("{{\"index\":{},\"data\":[", chunk.index).as_bytes());
    let mut objects = 0;
    let mut rejected = Vec::new();
    for (position, obj) in chunk.data.iter().enumerate() {
        let start = payload.len();
        let result = match transform {
            Transform::Fullname => {
                if objects > 0 {
                    payload.push(b',');
                }
                fullname(obj, &mut payload).map(|()| 1)
            }
            Transform::Jq(jq) => jq.apply(obj.get(), &mut payload, objects),
        };
        match result {
            Ok(n) => objects += n,
            Err(reason) => {
                payload.truncate(start);
                rejected.push(Rejected {
                    position,
                    reason,
                    object: obj.get().to_string(),
                });
            }
        }
    }
    payload.extend_from_slice(b"]}");
    Mapped {
        payload,
        objects,
        rejected,
    }
}

#[derive(Deserialize)]
struct Person<'a> {
    #[serde(borrow)]
    uuid: Cow<'a, str>,
    #[serde(rename = "fn", borrow)]
    first: Cow<'a, str>,
    #[serde(rename = "ln", borrow)]
    last: Cow<'a, str>,
}

#[derive(Serialize)]
struct Named<'a> {
    id: &'a str,
    name: String,
}

/// app9's mapping: `{uuid, fn, ln, ...}` to `{id: uuid, name: "fn ln"}`.
fn fullname(obj: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
    let p: Person = serde_json::from_str(obj.get())
        .map_err(|e| format!("fullname needs an object with string fields uuid, fn and ln: {e}"))?;
    let named = Named {
        id: &p.uuid,
        name: format!("{} {}", p.first, p.last),
    };
    serde_json::to_writer(out, &named).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_raw_chunk;

    #[test]
    fn fullname_maps_people() {
        let input = br#"{"index":7,"data":[{"uuid":"u1","fn":"Ada","ln":"Lovelace","friends":["u2"]},{"uuid":"u2","fn":"Al\"an","ln":"Turing","friends":[]}]}"#;
        let m = map_chunk(&Transform::Fullname, &parse_raw_chunk(input).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"index": 7, "data": [{"id": "u1", "name": "Ada Lovelace"}, {"id": "u2", "name": "Al\"an Turing"}]})
        );
        assert_eq!(m.objects, 2);
        assert!(m.rejected.is_empty());
    }

    #[test]
    fn rejected_objects_are_set_aside_and_the_rest_goes_on() {
        let input = br#"{"index":1,"data":[{"uuid":"a","fn":"A","ln":"B"},42,{"uuid":"c","fn":1,"ln":"D"},{"uuid":"e","fn":"E","ln":"F"}]}"#;
        let m = map_chunk(&Transform::Fullname, &parse_raw_chunk(input).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["id"], "e");
        assert_eq!(m.rejected.len(), 2);
        assert_eq!(m.rejected[0].position, 1);
        assert_eq!(m.rejected[0].object, "42");
        assert!(
            m.rejected[1].reason.contains("fn"),
            "{}",
            m.rejected[1].reason
        );
    }

    #[test]
    fn jq_outputs_replace_each_object() {
        let t = Transform::Jq(Jq::new("select(.fn != \"B\") | {id: .uuid}").unwrap());
        let input = br#"{"index":2,"data":[{"uuid":"a","fn":"A"},{"uuid":"b","fn":"B"},{"uuid":"c","fn":"C"},{"uuid":1,"fn":[]}]}"#;
        let m = map_chunk(&t, &parse_raw_chunk(input).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"index": 2, "data": [{"id": "a"}, {"id": "c"}, {"id": 1}]})
        );
        let bad = Transform::Jq(Jq::new(".fn + 1").unwrap());
        let m = map_chunk(&bad, &parse_raw_chunk(input).unwrap());
        assert_eq!(m.rejected.len(), 4);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["data"],
            serde_json::json!([])
        );
    }

    #[test]
    fn first_object_rejected_leaves_valid_json() {
        let input = br#"{"index":1,"data":[1,{"uuid":"e","fn":"E","ln":"F"}]}"#;
        let m = map_chunk(&Transform::Fullname, &parse_raw_chunk(input).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
    }
}
