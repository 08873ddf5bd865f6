//! gzip for replies a browser reads whole (the API's JSON, the console's files), when it asks
//! for it: a catalog of thousands of jobs or points is a few hundred kilobytes of JSON that
//! compresses about tenfold. Event streams and small replies go as they are.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flate2::{write::GzEncoder, Compression};
use std::io::Write;

/// Below this a reply is not worth compressing.
const MIN_BYTES: usize = 1024;

fn accepts_gzip(req: &Request) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            // "gzip;q=0" (or q=0.0) refuses it.
            name.eq_ignore_ascii_case("gzip")
                && !parts.any(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0))
        })
}

fn compressible(resp: &Response) -> bool {
    let kind = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    !resp.headers().contains_key(header::CONTENT_ENCODING)
        && ["application/json", "text/javascript", "text/css", "text/html"].iter().any(|k| kind.starts_with(k))
}

pub async fn gzip(req: Request, next: Next) -> Response {
    let wanted = accepts_gzip(&req);
    let mut resp = next.run(req).await;
    if !compressible(&resp) {
        return resp;
    }
    // Caches must keep the plain and the gzipped reply apart, whichever this one is.
    resp.headers_mut().append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if !wanted {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 256 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the reply could not be read to compress it").into_response();
    };
    if bytes.len() < MIN_BYTES {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    if encoder.write_all(&bytes).is_err() {
        return Response::from_parts(parts, Body::from(bytes));
    }
    match encoder.finish() {
        Ok(out) => {
            parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(out))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn call(accept: Option<&str>, path: &str) -> Response {
        let app = axum::Router::new()
            .route("/big", get(|| async { axum::Json(vec!["holdfast"; 1000]) }))
            .route("/small", get(|| async { axum::Json(vec!["holdfast"; 2]) }))
            .route(
                "/stream",
                get(|| async { ([(header::CONTENT_TYPE, "text/event-stream")], "data: x\n\n".repeat(500)) }),
            )
            .layer(axum::middleware::from_fn(gzip));
        let mut req = Request::builder().uri(path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT_ENCODING, a);
        }
        app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn json_is_gzipped_when_asked_and_comes_back_the_same() {
        let resp = call(Some("br, gzip, deflate"), "/big").await;
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain).unwrap();
        assert_eq!(plain, serde_json::to_string(&vec!["holdfast"; 1000]).unwrap());
        for (accept, path) in [
            (None, "/big"),
            (Some("gzip;q=0, br"), "/big"),
            (Some("gzip; q=0.0"), "/big"),
            (Some("gzip"), "/small"),
            (Some("gzip"), "/stream"),
        ] {
            let resp = call(accept, path).await;
            assert!(!resp.headers().contains_key(header::CONTENT_ENCODING), "{accept:?} {path} was compressed");
        }
    }
}
