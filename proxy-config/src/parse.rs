//! From bytes to typed objects: JSON syntax, one object or an array of
//! objects per file, telling the four kinds apart by their keys, and serde
//! type errors turned into JSON paths with a fix.
//!
//! Also home of [`Loc`] (where an object sits, for JSON paths) and
//! [`Report`] (the error collector every stage writes to).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ecs::{ClusterJson, NamespaceJson, ServiceJson, TaskDefinitionJson};
use crate::error::ApplyError;
use crate::model::NotUsed;

/// Where an object sits: its file and the JSON path of the object itself
/// (`$` or `$[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) file: String,
    pub(crate) prefix: String,
}

impl Loc {
    /// The JSON path of `suffix` (`.a.b[0]`) inside this object.
    pub(crate) fn at(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// Collects errors in the order found; `finish` sorts them by file. Also
/// collects the fields knit accepts but does not use (`not_used`).
#[derive(Debug, Default)]
pub(crate) struct Report {
    errors: Vec<ApplyError>,
    /// (file, JSON path) of each field knit does not use, in the order found.
    not_used: Vec<(String, String)>,
}

impl Report {
    /// Records one error at `suffix` inside the object at `loc`.
    pub(crate) fn error(
        &mut self,
        loc: &Loc,
        suffix: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(ApplyError {
            file: loc.file.clone(),
            path: loc.at(suffix),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// Records a field at `suffix` inside the object at `loc` that knit
    /// accepts but does not use.
    pub(crate) fn not_used(&mut self, loc: &Loc, suffix: &str) {
        self.not_used.push((loc.file.clone(), loc.at(suffix)));
    }

    /// The fields knit does not use, per file (files in the order first
    /// seen, paths in the order found); a path under another listed one is
    /// left out (the whole is named once).
    pub(crate) fn take_not_used(&mut self) -> Vec<NotUsed> {
        let all = std::mem::take(&mut self.not_used);
        let mut out: Vec<NotUsed> = Vec::new();
        for (file, path) in &all {
            let covered = all.iter().any(|(f, p)| {
                f == file
                    && p != path
                    && path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            });
            if covered {
                continue;
            }
            match out.iter_mut().find(|n| n.file == *file) {
                Some(n) if n.paths.contains(path) => {}
                Some(n) => n.paths.push(path.clone()),
                None => out.push(NotUsed {
                    file: file.clone(),
                    paths: vec![path.clone()],
                }),
            }
        }
        out
    }

    /// True when nothing went wrong so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// All errors, sorted by file (stable: within a file, in the order found).
    pub(crate) fn finish(mut self) -> Vec<ApplyError> {
        self.errors.sort_by(|a, b| a.file.cmp(&b.file));
        self.errors
    }
}

/// One object of one of the four kinds knit reads.
#[derive(Debug)]
pub(crate) enum Object {
    TaskDefinition(TaskDefinitionJson),
    Service(ServiceJson),
    Cluster(ClusterJson),
    Namespace(NamespaceJson),
}

/// One object and where it came from.
#[derive(Debug)]
pub(crate) struct Doc {
    pub(crate) loc: Loc,
    pub(crate) object: Object,
}

const KINDS: &str = "knit reads four kinds of objects: a task definition (keys \"family\" and \
     \"containerDefinitions\"), a service (\"serviceName\"), a cluster (\"clusterName\" or \
     \"serviceConnectDefaults\") and a namespace (\"Name\")";

/// The most objects one apply may carry (all its files together). The
/// VIP range holds 65,534 aliases; an apply far past what a fleet needs is
/// refused while it is read, before any object is built (a plan of 100,000
/// services costs the daemon hundreds of MB for nothing).
pub const MAX_OBJECTS_PER_APPLY: usize = 20_000;

/// How many objects a file holds (1 for an object or anything that is not
/// an array: the full parse reports what is wrong with it), counted
/// without building them; stops counting past `budget`.
pub(crate) fn count_objects(bytes: &[u8], budget: usize) -> usize {
    use serde::de::{Deserializer, Error, IgnoredAny, SeqAccess, Visitor};
    struct Count<'a>(usize, &'a std::cell::Cell<usize>);
    impl<'de> Visitor<'de> for Count<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {
                self.1.set(self.1.get() + 1);
                if self.1.get() > self.0 {
                    // Stop reading here: the caller knows why.
                    return Err(A::Error::custom("over budget"));
                }
            }
            Ok(())
        }
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"[") {
        return 1;
    }
    let seen = std::cell::Cell::new(0);
    let mut de = serde_json::Deserializer::from_slice(trimmed);
    // A syntax error is the full parse's to report; what was counted stands.
    let _ = (&mut de).deserialize_seq(Count(budget, &seen));
    seen.get()
}

/// Parses one file into its objects; problems go to `report`.
pub(crate) fn file(name: &str, bytes: &[u8], report: &mut Report) -> Vec<Doc> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let root = Loc {
        file: name.to_owned(),
        prefix: "$".to_owned(),
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            report.error(
                &root,
                "",
                format!("this is not valid JSON: {e}"),
                format!(
                    "fix the JSON syntax at line {}, column {}",
                    e.line(),
                    e.column()
                ),
            );
            return Vec::new();
        }
    };
    let mut docs = Vec::new();
    match value {
        Value::Object(map) => docs.extend(object(root, map, report)),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let loc = Loc {
                    file: name.to_owned(),
                    prefix: format!("$[{i}]"),
                };
                match item {
                    Value::Object(map) => docs.extend(object(loc, map, report)),
                    other => report.error(
                        &loc,
                        "",
                        format!("expected a JSON object, found {}", kind_of_value(&other)),
                        format!("replace it with an object; {KINDS}"),
                    ),
                }
            }
        }
        other => report.error(
            &root,
            "",
            format!(
                "expected a JSON object or an array of objects, found {}",
                kind_of_value(&other)
            ),
            format!("put one object, or an array of objects, in the file; {KINDS}"),
        ),
    }
    docs
}

fn kind_of_value(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object(loc: Loc, map: Map<String, Value>, report: &mut Report) -> Option<Doc> {
    let has = |k: &str| map.contains_key(k);
    let object = if has("family") && has("containerDefinitions") {
        Object::TaskDefinition(typed(&loc, map, report)?)
    } else if has("serviceName") {
        Object::Service(typed(&loc, map, report)?)
    } else if has("clusterName") || has("serviceConnectDefaults") {
        Object::Cluster(typed(&loc, map, report)?)
    } else if has("Name") {
        Object::Namespace(typed(&loc, map, report)?)
    } else {
        report.error(
            &loc,
            "",
            format!("cannot tell what this object is; {KINDS}"),
            unknown_kind_fix(&map),
        );
        return None;
    };
    Some(Doc { loc, object })
}

/// A fix for an object of no known kind, as specific as its keys allow.
fn unknown_kind_fix(map: &Map<String, Value>) -> String {
    let only = |k: &str| map.len() == 1 && map.get(k).is_some_and(Value::is_object);
    if map.contains_key("family") {
        "add \"containerDefinitions\": a task definition needs both \"family\" and \
         \"containerDefinitions\""
            .to_owned()
    } else if only("taskDefinition") || only("service") || only("cluster") || only("Namespace") {
        let key = map.keys().next().map(String::as_str).unwrap_or_default();
        format!(
            "this looks like the output of an aws command; give knit the object under \
             \"{key}\" instead (e.g. `jq .{key} FILE`)"
        )
    } else if map.contains_key("name") {
        "a namespace's name goes under \"Name\" (capital N, as in `aws servicediscovery \
         create-http-namespace`)"
            .to_owned()
    } else {
        "add the key that says what it is (e.g. \"serviceName\" for a service), or remove the \
         object"
            .to_owned()
    }
}

/// Keys that another part of knit reads from the raw JSON, or that are
/// being brought in: never listed as not used.
const READ_ELSEWHERE: &[&str] = &["testTrafficRules"];

/// Deserializes `map` into `T`, reporting a type error with its JSON path.
/// Every key `T` does not declare is accepted and recorded as not used
/// (serde_ignored tells which, with its path).
fn typed<T: DeserializeOwned>(
    loc: &Loc,
    map: Map<String, Value>,
    report: &mut Report,
) -> Option<T> {
    let mut ignored = Vec::new();
    let mut note = |path: serde_ignored::Path| {
        if let serde_ignored::Path::Map { key, .. } = &path
            && READ_ELSEWHERE.contains(&key.as_str())
        {
            return;
        }
        ignored.push(ignored_path(&path));
    };
    let de = serde_ignored::Deserializer::new(Value::Object(map), &mut note);
    let result = serde_path_to_error::deserialize(de);
    for suffix in ignored {
        report.not_used(loc, &suffix);
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            let suffix = json_path(e.path());
            let inner = e.inner().to_string();
            let wanted = inner
                .rsplit_once(", expected ")
                .map(|(_, expected)| friendly_type(expected))
                .unwrap_or_else(|| "the type the ECS API gives it".to_owned());
            let path = loc.at(&suffix);
            report.error(
                loc,
                &suffix,
                format!(
                    "wrong type: {}",
                    inner.strip_prefix("invalid type: ").unwrap_or(&inner)
                ),
                format!("make {path} {wanted}"),
            );
            None
        }
    }
}

/// serde's "expected ..." in words a JSON author knows.
fn friendly_type(expected: &str) -> String {
    match expected {
        "a sequence" => "a JSON array ([...])".to_owned(),
        "a string" => "a JSON string (\"...\")".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "an integer" => "an integer (no quotes, no decimals)".to_owned(),
        e if e.starts_with("struct ") || e == "a map" => "a JSON object ({...})".to_owned(),
        e => e.to_owned(),
    }
}

/// A key serde_ignored reports as a suffix like `.containerDefinitions[0].cpu`.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => format!("{}{}", ignored_path(parent), key_segment(key)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// `.key`, or `["key"]` for a key that is not an identifier.
fn key_segment(key: &str) -> String {
    let ident = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        format!(".{key}")
    } else {
        format!("[{}]", Value::String(key.to_owned()))
    }
}

/// `serviceConnectConfiguration.services[0].portName` as a suffix
/// `.serviceConnectConfiguration.services[0].portName` (keys that are not
/// identifiers are written `["key"]`).
fn json_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key_segment(key))
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod count_tests {
    use super::count_objects;

    #[test]
    fn objects_are_counted_up_to_the_budget() {
        assert_eq!(count_objects(br#"{"family": "a"}"#, 5), 1);
        assert_eq!(count_objects(br#" [{}, {}, {"a": [1, 2]}]"#, 5), 3);
        assert_eq!(count_objects(br#"[{}, {}, {}, {}]"#, 2), 3);
        assert_eq!(count_objects(br#"[{}, {"#, 5), 1);
    }
}
