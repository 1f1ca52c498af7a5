//! Swagger UI at `/api/v1/docs`: served from files compiled into the binary, with
//! nothing loaded from another host.

use crate::helpers::TestApp;

/// The `src` and `href` attribute values of a page.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (start, _) in html.match_indices(attribute) {
            let rest = &html[start + attribute.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

#[actix_web::test]
async fn the_docs_page_and_its_files_come_from_this_server() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/docs", "/api/v1/docs/"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let html = response.text().await.unwrap();
        assert!(!html.contains("://"), "{path}: an absolute URL in\n{html}");
        assert!(html.contains("<base href=\"/api/v1/docs/\">"), "{html}");
        let links = links(&html);
        assert!(
            links.iter().any(|l| l.ends_with("swagger-ui-bundle.js")),
            "{links:?}"
        );
        for link in links.iter().filter(|l| *l != "/api/v1/docs/") {
            let file = link.trim_start_matches("./");
            assert!(!file.contains('/'), "{link}: resolved against the base");
            let asset = app.get(&format!("/api/v1/docs/{file}")).await;
            assert_eq!(asset.status(), 200, "{link}");
            assert!(!asset.bytes().await.unwrap().is_empty(), "{link}");
        }
    }

    let bundle = app.get("/api/v1/docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status(), 200);
    let content_type = bundle.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.contains("javascript"), "{content_type}");
    assert!(
        bundle.bytes().await.unwrap().len() > 100_000,
        "the real bundle"
    );

    // The initializer points Swagger UI at our document, and at no validator.
    let init = app.get("/api/v1/docs/swagger-initializer.js").await;
    assert_eq!(init.status(), 200);
    let init = init.text().await.unwrap();
    assert!(init.contains("\"url\": \"/api/v1/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    assert!(!init.contains("://"), "{init}");
}

#[actix_web::test]
async fn an_unknown_docs_file_is_an_enveloped_404() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/docs/nothing-here.js").await;
    crate::helpers::assert_error(response, 404, "not_found").await;
}
