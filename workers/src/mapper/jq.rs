//! The jq transform, on the jaq crates: each object is run through the expression and every
//! value it yields goes on (none drops the object, several expand it); an error rejects it.

use jaq_core::{
    data::JustLut,
    load::{Arena, File, Loader},
    unwrap_valr, Compiler, Ctx, Native, Vars,
};
use jaq_json::Val;

type Filter = jaq_core::compile::Filter<Native<JustLut<Val>>>;

pub struct Jq {
    filter: Filter,
}

impl Jq {
    /// Compiles `code` once per process; the error names what is wrong with it.
    pub fn new(code: &str) -> Result<Jq, String> {
        // The compiled filter borrows its source for as long as the mapper runs.
        let code: &'static str = Box::leak(code.to_string().into_boxed_str());
        let arena: &'static Arena = Box::leak(Box::default());
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let modules = Loader::new(defs)
            .load(arena, File { code, path: () })
            .map_err(|errs| {
                format!(
                    "jq expression `{code}` does not parse: {}",
                    describe_load(&errs)
                )
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                format!(
                    "jq expression `{code}` does not compile: {}",
                    describe_compile(&errs)
                )
            })?;
        Ok(Jq { filter })
    }

    /// Appends each output of the expression for `object` to `out` as JSON, comma separated
    /// after the `written` values already there; returns how many it wrote.
    pub fn apply(&self, object: &str, out: &mut Vec<u8>, written: usize) -> Result<usize, String> {
        let input = jaq_json::read::parse_single(object.as_bytes())
            .map_err(|e| format!("not JSON: {e}"))?;
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut n = 0;
        for v in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let v = v.map_err(|e| format!("jq: {e}"))?;
            if written + n > 0 {
                out.push(b',');
            }
            let start = out.len();
            jaq_json::write::write(out, &jaq_json::write::Pp::default(), 0, &v)
                .map_err(|e| e.to_string())?;
            // jaq writes values JSON has no form for (nan, infinite, non-string keys): one of
            // them would make the whole chunk unreadable for the saver, again at each re-send.
            if serde_json::from_slice::<serde::de::IgnoredAny>(&out[start..]).is_err() {
                return Err(format!(
                    "jq: the output {} is not JSON",
                    String::from_utf8_lossy(&out[start..out.len().min(start + 80)])
                ));
            }
            n += 1;
        }
        Ok(n)
    }
}

fn describe_load(errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, e) in errs {
        match e {
            Error::Io(es) => out.extend(
                es.iter()
                    .map(|(path, msg)| format!("cannot load {path}: {msg}")),
            ),
            Error::Lex(es) => out.extend(
                es.iter()
                    .map(|(expect, at)| format!("expected {} at `{at}`", expect.as_str())),
            ),
            Error::Parse(es) => out.extend(
                es.iter()
                    .map(|(expect, at)| format!("expected {} at `{at}`", expect.as_str())),
            ),
        }
    }
    out.join("; ")
}

fn describe_compile(errs: &jaq_core::compile::Errors<&str, ()>) -> String {
    errs.iter()
        .flat_map(|(_, es)| {
            es.iter()
                .map(|(name, undefined)| format!("undefined {} `{name}`", undefined.as_str()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: &str, input: &str) -> Result<String, String> {
        let jq = Jq::new(code)?;
        let mut out = Vec::new();
        jq.apply(input, &mut out, 0)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn maps_objects() {
        assert_eq!(
            run(
                r#"{id: .uuid, name: "\(.fn) \(.ln)"}"#,
                r#"{"uuid":"u","fn":"A","ln":"B"}"#
            )
            .unwrap(),
            r#"{"id":"u","name":"A B"}"#
        );
    }

    #[test]
    fn select_drops_and_streams_expand() {
        assert_eq!(run("select(.n > 1)", r#"{"n":1}"#).unwrap(), "");
        assert_eq!(run(".xs[]", r#"{"xs":[1,2]}"#).unwrap(), "1,2");
    }

    #[test]
    fn outputs_json_cannot_hold_are_rejected() {
        for code in ["nan", "infinite", ".x * 1e308 * 10", "{(1): 2}"] {
            let e = run(code, r#"{"x": 1}"#);
            assert!(
                e.as_ref().is_err_and(|e| e.contains("is not JSON")),
                "{code}: {e:?}"
            );
        }
        assert_eq!(run(".x * 2", r#"{"x": 1}"#).unwrap(), "2");
    }

    #[test]
    fn errors_are_reported() {
        assert!(run(".a +", "{}").unwrap_err().contains("does not parse"));
        assert!(run("nosuchfn(1)", "{}")
            .unwrap_err()
            .contains("does not compile"));
        assert!(run(".a + 1", r#"{"a":"x"}"#)
            .unwrap_err()
            .starts_with("jq:"));
    }
}
