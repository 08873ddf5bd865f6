//! The web console's files (`web/ui/`), compiled into the binary and served at `/` and `/ui/…`,
//! and the headers every reply carries so that a page runs only its own code: a
//! Content-Security-Policy without inline script, no framing, no content sniffing. The console
//! is a client of the JSON API; nothing here reads the backend.

use crate::openapi::{Reply, Shapes};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::SchemaGenerator;

/// One file of the console.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $mime:expr),* $(,)?) => {
        &[$(Asset { name: $name, mime: $mime, body: include_bytes!(concat!("../ui/", $name)) }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = assets!(
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "app.js" => JS,
    "dashboard.js" => JS,
    "platforms.js" => JS,
    "rules.js" => JS,
    "points.js" => JS,
    "restore.js" => JS,
    "recoveries.js" => JS,
    "jobs.js" => JS,
    "statistics.js" => JS,
    "settings.js" => JS,
);

/// What every reply carries. The console's scripts and styles are its own files; what the API
/// returns is put in the page as text, so even a bug there cannot run a hypervisor's string.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
     form-action 'self'";

pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// A console file, or 304 when the browser has this version (its ETag is the content's hash,
/// so a new appliance version is fetched at once and an unchanged file costs one round trip).
pub struct UiFile {
    asset: Option<&'static Asset>,
    fresh: bool,
}

impl UiFile {
    fn named(name: &str, headers: &HeaderMap) -> UiFile {
        let asset = ASSETS.iter().find(|a| a.name == name);
        let fresh = match (asset, headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())) {
            (Some(a), Some(sent)) => sent.split(',').any(|t| t.trim() == etag(a.body)),
            _ => false,
        };
        UiFile { asset, fresh }
    }
}

fn etag(body: &[u8]) -> String {
    // FNV-1a: the files are small and fixed in the binary; this only has to change when they do.
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("\"{hash:016x}\"")
}

impl IntoResponse for UiFile {
    fn into_response(self) -> Response {
        let Some(asset) = self.asset else {
            return (StatusCode::NOT_FOUND, "no such file of the console").into_response();
        };
        let tag = etag(asset.body);
        let cache = [(header::CACHE_CONTROL, "no-cache"), (header::ETAG, tag.as_str())];
        if self.fresh {
            return (StatusCode::NOT_MODIFIED, cache).into_response();
        }
        (cache, [(header::CONTENT_TYPE, asset.mime)], asset.body).into_response()
    }
}

impl Reply for UiFile {
    fn describe(_: &mut SchemaGenerator, s: &mut Shapes) {
        s.file();
    }
}

/// The console's page.
pub async fn index(headers: HeaderMap) -> UiFile {
    UiFile::named("index.html", &headers)
}

/// One of the console's scripts or its style sheet.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> UiFile {
    UiFile::named(&name, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_and_its_modules_load_is_served() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).unwrap();
            // src="/ui/x", href="/ui/x", and modules' import … from './x.js' / import('./x.js').
            for part in text.split("/ui/").skip(1).chain(text.split("'./").skip(1)) {
                let name: String =
                    part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-').collect();
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(names.contains(&name.as_str()), "{} loads {name}, which is not served", a.name);
                }
            }
        }
    }
}
