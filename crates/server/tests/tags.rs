//! Tags through HTTP, on whatever stores the environment names (`make test` runs this on
//! SQLite + a blob directory and again on PostgreSQL + S3): create, move, read, list with
//! paging, delete, their events, the rules of names and packages, tenancy, and their deletion
//! with their package in the package's commit.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn finalized(app: &TestApp) -> String {
    let id = app.package_id().await;
    app.add_file(&id, "a.txt", b"a".to_vec()).await;
    app.finalize(&id).await;
    id
}

async fn put_tag(app: &TestApp, name: &str, package: &str, token: &str) -> reqwest::Response {
    app.req(Method::PUT, &format!("/tags/{name}"), Some(token))
        .json(&json!({ "package_id": package }))
        .send()
        .await
        .unwrap()
}

fn events_of(events: &Value, kind: &str) -> Vec<Value> {
    let items = events["events"].as_array().unwrap();
    items
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

#[tokio::test]
async fn tags_are_set_moved_read_listed_and_deleted_with_events() {
    let app = TestApp::start().await;
    let (first, second) = (finalized(&app).await, finalized(&app).await);
    let since = app.events_json(0).await["next_since"].as_u64().unwrap();

    let created = put_tag(&app, "team/app/latest", &first, ACME).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["location"], "/tags/team/app/latest");
    let tag: Value = created.json().await.unwrap();
    let package: Value = json_of(app.get(&format!("/packages/{first}"))).await;
    assert_eq!(tag["tenant"], "acme");
    assert_eq!(tag["repository"], "team/app");
    assert_eq!(tag["tag"], "latest");
    assert_eq!(tag["package_id"], first.as_str());
    assert_eq!(tag["manifest_digest"], package["manifest_digest"]);
    assert!(tag["updated_at"].as_str().unwrap().ends_with('Z'));

    let again = put_tag(&app, "team/app/latest", &first, ACME).await;
    assert_eq!(again.status(), StatusCode::OK, "naming the same package");
    let moved = put_tag(&app, "team/app/latest", &second, ACME).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let read = json_of(app.get("/tags/team/app/latest")).await;
    assert_eq!(read["package_id"], second.as_str());

    let events = app.events_json(since).await;
    let set = events_of(&events, "tag.set");
    assert_eq!(set.len(), 2, "no event when nothing changed: {events}");
    assert_eq!(set[0]["data"]["previous_package_id"], Value::Null);
    assert_eq!(set[0]["package_id"], first.as_str());
    assert_eq!(set[1]["data"]["previous_package_id"], first.as_str());
    assert_eq!(set[1]["data"]["package_id"], second.as_str());
    assert_eq!(set[1]["data"]["repository"], "team/app");

    // Listing: by repository then tag, in byte order, paged; one repository; other tenants.
    for name in ["team/app/V2", "team/app/v1", "team/app-b/x", "z/_x"] {
        assert_eq!(put_tag(&app, name, &first, ACME).await.status(), 201);
    }
    assert_eq!(
        put_tag(&app, "team/app/other", &first, BETA).await.status(),
        404
    );
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = json_of(app.get(&format!("/tags?limit=2{cursor}"))).await;
        for t in page["items"].as_array().unwrap() {
            seen.push(format!(
                "{}:{}",
                t["repository"].as_str().unwrap(),
                t["tag"].as_str().unwrap()
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "team/app:V2",
            "team/app:latest",
            "team/app:v1",
            "team/app-b:x",
            "z:_x"
        ]
    );
    let one = json_of(app.get("/tags?repository=team/app")).await;
    assert_eq!(one["items"].as_array().unwrap().len(), 3);
    let beta = json_of(app.req(Method::GET, "/tags", Some(BETA))).await;
    assert_eq!(beta["items"], json!([]));
    let hidden = app.req(Method::GET, "/tags/team/app/latest", Some(BETA));
    problem(hidden.send().await.unwrap(), 404).await;

    let deleted = app.req(Method::DELETE, "/tags/team/app/v1", Some(ACME));
    assert_eq!(
        deleted.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let gone = app.req(Method::DELETE, "/tags/team/app/v1", Some(ACME));
    problem(gone.send().await.unwrap(), 404).await;
    let events = app.events_json(since).await;
    let removed = events_of(&events, "tag.deleted");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["data"]["reason"], "request");
    assert_eq!(removed[0]["data"]["tag"], "v1");
    // The package stays.
    assert_eq!(
        app.get(&format!("/packages/{first}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_names_open_packages_and_read_tokens_are_refused() {
    let app = TestApp::start().await;
    let done = finalized(&app).await;
    let open = app.package_id().await;
    problem(put_tag(&app, "app/latest", &open, ACME).await, 409).await;
    problem(put_tag(&app, "app/latest", "pkg_nope", ACME).await, 422).await;
    problem(
        put_tag(&app, "app/latest", "pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA", ACME).await,
        404,
    )
    .await;
    problem(put_tag(&app, "app/latest", &done, ACME_RO).await, 403).await;
    for bad in [
        "App/latest",
        "app/.x",
        "latest",
        "app//x",
        "a..b/x",
        &format!("app/{}", "t".repeat(129)),
    ] {
        let refused = put_tag(&app, bad, &done, ACME).await;
        assert_eq!(refused.status(), 422, "{bad}");
    }
    let no_body = app
        .req(Method::PUT, "/tags/app/x", Some(ACME))
        .json(&json!({}));
    problem(no_body.send().await.unwrap(), 422).await;
    let listed = json_of(app.get("/tags")).await;
    assert_eq!(listed["items"], json!([]), "nothing stored");
    let bad_cursor = app.get("/tags?cursor=zz").send().await.unwrap();
    problem(bad_cursor, 422).await;
}

/// Deleting a package deletes its tags in the same commit: `package.deleted`, then one
/// `tag.deleted` (`package_deleted`) per tag, in byte order, with consecutive sequences. A
/// tag on another package stays.
#[tokio::test]
async fn a_deleted_package_takes_its_tags_in_one_commit() {
    let app = TestApp::start().await;
    let (doomed, kept) = (finalized(&app).await, finalized(&app).await);
    for name in ["app/b", "app/a", "lib/x"] {
        put_tag(&app, name, &doomed, ACME).await;
    }
    put_tag(&app, "app/kept", &kept, ACME).await;
    let since = app.events_json(0).await["next_since"].as_u64().unwrap();
    let delete = app.req(Method::DELETE, &format!("/packages/{doomed}"), Some(ACME));
    assert_eq!(
        delete.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );

    let events = app.events_json(since).await;
    let items = events["events"].as_array().unwrap();
    let kinds: Vec<_> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "package.deleted",
            "tag.deleted",
            "tag.deleted",
            "tag.deleted"
        ]
    );
    let sequences: Vec<u64> = items
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{sequences:?}"
    );
    let names: Vec<String> = items[1..]
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["data"]["repository"].as_str().unwrap(),
                e["data"]["tag"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["app:a", "app:b", "lib:x"]);
    assert!(
        items[1..]
            .iter()
            .all(|e| e["data"]["reason"] == "package_deleted")
    );
    problem(app.get("/tags/app/a").send().await.unwrap(), 404).await;
    let left = json_of(app.get("/tags")).await;
    let left: Vec<_> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].clone())
        .collect();
    assert_eq!(left, [json!("kept")]);
}

/// An anonymous reader whose reads span every tenant names one; a token's reader reads its own.
#[tokio::test]
async fn anonymous_readers_name_the_tenant() {
    let app = TestApp::builder().anon_read_all().start().await;
    let id = finalized(&app).await;
    put_tag(&app, "app/v1", &id, ACME).await;
    let anon = |path: &str| app.req(Method::GET, path, None);
    problem(anon("/tags").send().await.unwrap(), 400).await;
    let listed = json_of(anon("/tags?tenant=acme")).await;
    assert_eq!(listed["items"][0]["tag"], "v1");
    let read = json_of(anon("/tags/app/v1?tenant=acme")).await;
    assert_eq!(read["package_id"], id.as_str());
    problem(anon("/tags/app/v1?tenant=beta").send().await.unwrap(), 404).await;
    let put = app
        .req(Method::PUT, "/tags/app/v2", None)
        .json(&json!({"package_id": id}));
    problem(put.send().await.unwrap(), 401).await;
}
