//! vSphere's SOAP replies as a small owned tree: elements by local name (namespaces and their
//! prefixes dropped), `xsi:type` kept without its prefix, text trimmed. Parsing is bounded: a
//! reply is refused past a size and a node count, DTDs are refused, and nothing here panics on
//! what a server sends.

/// The most a reply may hold (bytes); a page of 100 VMs' configurations is well under 4 MiB.
pub const MAX_REPLY: usize = 32 << 20;
/// The most elements a reply may have.
const MAX_NODES: u32 = 2_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct El {
    /// Local name ("returnval", "propSet").
    pub name: String,
    /// `xsi:type` without its prefix ("VirtualDisk", "string"), when given.
    pub xsi_type: Option<String>,
    /// The `type` attribute of a managed object reference ("VirtualMachine").
    pub mo_type: Option<String>,
    /// Text content (trimmed), for leaves.
    pub text: String,
    pub children: Vec<El>,
    /// The element's source text, kept only where asked (a VM's configuration, verbatim).
    pub raw: Option<String>,
}

impl El {
    pub fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the child `name`, if there is one.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The child at a dotted path ("config.hardware").
    pub fn path(&self, path: &str) -> Option<&El> {
        path.split('.').try_fold(self, |el, part| el.child(part))
    }

    pub fn u64_of(&self, name: &str) -> Option<u64> {
        self.text_of(name)?.parse().ok()
    }

    pub fn i64_of(&self, name: &str) -> Option<i64> {
        self.text_of(name)?.parse().ok()
    }

    pub fn bool_of(&self, name: &str) -> Option<bool> {
        match self.text_of(name)? {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }

    /// A managed object reference child: (type, value).
    pub fn moref_of(&self, name: &str) -> Option<MoRef> {
        let c = self.child(name)?;
        Some(MoRef { kind: c.mo_type.clone().unwrap_or_default(), value: c.text.clone() })
    }
}

/// A managed object reference: its type and id ("VirtualMachine", "vm-42").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef { kind: kind.into(), value: value.into() }
    }

    /// As an argument element: `<name type="Kind">value</name>`.
    pub fn arg(&self, name: &str) -> String {
        format!("<{name} type=\"{}\">{}</{name}>", esc(&self.kind), esc(&self.value))
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value)
    }
}

/// Escapes text for an XML element or attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses a reply; elements named in `keep_raw` keep their source text.
pub fn parse(text: &str, keep_raw: &[&str]) -> Result<El, String> {
    if text.len() > MAX_REPLY {
        return Err(format!("the reply is {} bytes, more than the {MAX_REPLY} allowed", text.len()));
    }
    // roxmltree recurses with the nesting, so a hostile reply could exhaust the stack: bound
    // the depth on the raw text first (a tag's '<' opens, "</" and "/>" close).
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match (b, bytes.get(i + 1)) {
            (b'<', Some(b'/')) => depth = depth.saturating_sub(1),
            (b'<', Some(b'?' | b'!')) => {}
            (b'<', _) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("the reply nests elements more than {MAX_DEPTH} deep"));
                }
            }
            (b'/', Some(b'>')) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| format!("the reply is not XML: {e}"))?;
    convert(doc.root_element(), text, keep_raw, 0)
}

/// The deepest nesting a reply may have (vSphere's go about 15 deep).
const MAX_DEPTH: usize = 128;

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

fn convert(node: roxmltree::Node<'_, '_>, src: &str, keep_raw: &[&str], depth: usize) -> Result<El, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the reply nests elements more than {MAX_DEPTH} deep"));
    }
    let name = node.tag_name().name().to_string();
    let xsi_type = node.attribute((XSI, "type")).map(|t| t.rsplit(':').next().unwrap_or(t).to_string());
    let mo_type = node.attribute("type").map(str::to_string);
    let mut children = Vec::new();
    let mut text = String::new();
    for c in node.children() {
        if c.is_element() {
            children.push(convert(c, src, keep_raw, depth + 1)?);
        } else if c.is_text() {
            text.push_str(c.text().unwrap_or_default());
        }
    }
    let raw = keep_raw.contains(&name.as_str()).then(|| src.get(node.range()).unwrap_or_default().to_string());
    Ok(El { name, xsi_type, mo_type, text: text.trim().to_string(), children, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_by_local_name_with_their_types() {
        let el = parse(
            r#"<a:E xmlns:a="urn:x" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
                 <val xsi:type="xsd:string"> hi </val><obj type="VirtualMachine">vm-1</obj><n>7</n><b>true</b>
               </a:E>"#,
            &["val"],
        )
        .unwrap();
        assert_eq!(el.name, "E");
        assert_eq!(el.child("val").unwrap().xsi_type.as_deref(), Some("string"));
        assert_eq!(el.text_of("val"), Some("hi"));
        assert!(el.child("val").unwrap().raw.as_deref().unwrap().starts_with("<val"));
        assert_eq!(el.moref_of("obj"), Some(MoRef::new("VirtualMachine", "vm-1")));
        assert_eq!((el.u64_of("n"), el.bool_of("b"), el.u64_of("nothing")), (Some(7), Some(true), None));
    }

    #[test]
    fn hostile_replies_are_refused_without_panic() {
        assert!(parse("<a><b></a>", &[]).is_err());
        assert!(parse("", &[]).is_err());
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>"#;
        assert!(parse(dtd, &[]).is_err());
        let deep = "<a>".repeat(5000) + &"</a>".repeat(5000);
        assert!(parse(&deep, &[]).is_err());
        assert!(parse(&"x".repeat(MAX_REPLY + 1), &[]).is_err());
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
