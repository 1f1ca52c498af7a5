//! The admin API: who may use it, listing and searching users, changing a user's
//! plan or deactivating them (which signs them out at once), and the audit rows
//! admin actions leave.

use serde_json::{Value, json};

use crate::audit::{AGENT, actions, audit_until};
use crate::helpers::{PASSWORD, TestApp, assert_error};
use crate::templates::custom_template;

async fn patch(app: &TestApp, token: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(token)
        .header("user-agent", AGENT)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn user_id(session: &Value) -> String {
    session["user"]["id"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn admin_routes_refuse_anonymous_callers_and_non_admins() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let session = app.signed_up("mallory").await;
    let user = session["access_token"].as_str().unwrap();
    let target = format!("/api/v1/admin/users/{}", user_id(&session));
    let routes = [
        ("GET", "/api/v1/admin/users".to_owned()),
        ("GET", "/api/v1/admin/audit".to_owned()),
        ("PATCH", target.clone()),
    ];
    let send = |method: &str, path: &str, token: Option<&str>| {
        let mut request = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .json(&json!({"subscription_plan": "pro"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for (method, path) in &routes {
        let anonymous = send(method, path, None).await.unwrap();
        assert_error(anonymous, 401, "unauthorized").await;
        let forbidden = send(method, path, Some(user)).await.unwrap();
        assert_error(forbidden, 403, "forbidden").await;
        let allowed = send(method, path, Some(&admin)).await.unwrap();
        assert_eq!(allowed.status(), 200, "{method} {path}");
    }
    // The refused attempts are on record, naming the route.
    let denied = audit_until(&app, &admin, "action=admin.access_denied", |e| e.len() == 3).await;
    let mut endpoints: Vec<&str> = denied
        .iter()
        .map(|e| {
            assert_eq!(e["user_id"], session["user"]["id"]);
            assert_eq!(e["outcome"], "denied");
            assert_eq!(e["resource_type"], "endpoint");
            e["resource_id"].as_str().unwrap()
        })
        .collect();
    endpoints.sort_unstable();
    assert_eq!(
        endpoints,
        [
            "GET /api/v1/admin/audit",
            "GET /api/v1/admin/users",
            "PATCH /api/v1/admin/users/{id}"
        ]
    );
}

#[actix_web::test]
async fn admins_list_and_search_users_page_by_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    for name in ["amy", "bert", "carl_x", "dora"] {
        app.signed_up(name).await;
    }
    let list = |query: &'static str| {
        let client = app.authed_client(&admin);
        async move {
            let response = client.get(&format!("/api/v1/admin/users?{query}")).await;
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Value>().await.unwrap()
        }
    };
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = list("").await;
    assert_eq!(all["total"], 5);
    assert_eq!(all["per_page"], 50);
    assert_eq!(names(&all), ["root", "amy", "bert", "carl_x", "dora"]);
    // The contract's user object, and nothing secret.
    let user = &all["items"][1];
    for field in [
        "id",
        "username",
        "email",
        "is_active",
        "is_verified",
        "subscription_plan",
        "created_at",
    ] {
        assert!(user.get(field).is_some(), "{field}: {user}");
    }
    assert!(!user.to_string().contains("argon2"), "{user}");

    let first = list("per_page=2").await;
    assert_eq!(
        (names(&first), &first["has_more"]),
        (vec!["root".into(), "amy".into()], &json!(true))
    );
    let last = list("per_page=2&page=3").await;
    assert_eq!(names(&last), ["dora"]);
    assert_eq!(
        (&last["total"], &last["page"], &last["has_more"]),
        (&json!(5), &json!(3), &json!(false))
    );

    // `q` looks in usernames and e-mail addresses, ignoring case; `_` and `%`
    // are plain characters.
    assert_eq!(names(&list("q=CARL").await), ["carl_x"]);
    assert_eq!(names(&list("q=dora%40example").await), ["dora"]);
    assert_eq!(list("q=example.com").await["total"], 5);
    assert_eq!(names(&list("q=l_x").await), ["carl_x"]);
    assert_eq!(list("q=a_y").await["total"], 0);
    assert_eq!(list("q=%25").await["total"], 0);

    for (query, field) in [
        ("per_page=0", "per_page"),
        ("per_page=201", "per_page"),
        ("page=-1", "page"),
        ("search=amy", "search"),
    ] {
        let response = app
            .authed_client(&admin)
            .get(&format!("/api/v1/admin/users?{query}"))
            .await;
        let body = assert_error(response, 422, "validation_error").await;
        assert!(
            body["context"]["fields"][field].is_array(),
            "{query}: {body}"
        );
    }
    let long = format!("/api/v1/admin/users?q={}", "x".repeat(101));
    let body = assert_error(
        app.authed_client(&admin).get(&long).await,
        422,
        "validation_error",
    )
    .await;
    assert!(body["context"]["fields"]["q"].is_array());
}

#[actix_web::test]
async fn admins_change_plans_and_deactivation_signs_the_user_out_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let root_id = app
        .authed_client(&admin)
        .get("/api/v1/auth/me")
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = app.signed_up("frank").await;
    let frank = user_id(&session);
    let access = session["access_token"].as_str().unwrap();
    let path = format!("/api/v1/admin/users/{frank}");

    let upgraded = patch(
        &app,
        &admin,
        &path,
        &json!({"subscription_plan": "pro", "is_active": null}),
    )
    .await;
    assert_eq!(upgraded.status(), 200);
    let upgraded: Value = upgraded.json().await.unwrap();
    assert_eq!(
        (&upgraded["subscription_plan"], &upgraded["is_active"]),
        (&json!("pro"), &json!(true))
    );
    let me: Value = app
        .authed_client(access)
        .get("/api/v1/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["subscription_plan"], "pro");

    // Bad changes: 422 naming the field, nothing changed; unknown users: 404.
    for (body, field) in [
        (json!({"subscription_plan": "gold"}), "subscription_plan"),
        (json!({"subscription_plan": 3}), "subscription_plan"),
        (json!({"is_active": "no"}), "is_active"),
        (json!({"email": "new@example.com"}), "email"),
        (json!({}), "body"),
        (json!({"subscription_plan": null}), "body"),
    ] {
        let response = patch(&app, &admin, &path, &body).await;
        let error = assert_error(response, 422, "validation_error").await;
        assert!(
            error["context"]["fields"][field].is_array(),
            "{body}: {error}"
        );
    }
    for missing in [
        "/api/v1/admin/users/not-a-uuid",
        &format!("/api/v1/admin/users/{}", uuid::Uuid::new_v4()),
    ] {
        let response = patch(&app, &admin, missing, &json!({"is_active": true})).await;
        assert_error(response, 404, "not_found").await;
    }
    // Administrators cannot lock themselves out.
    let own = format!("/api/v1/admin/users/{root_id}");
    for (body, field) in [
        (json!({"is_active": false}), "is_active"),
        (json!({"subscription_plan": "free"}), "subscription_plan"),
    ] {
        let error = assert_error(
            patch(&app, &admin, &own, &body).await,
            422,
            "validation_error",
        )
        .await;
        assert!(error["context"]["fields"][field].is_array(), "{error}");
    }
    assert_eq!(
        patch(&app, &admin, &own, &json!({"subscription_plan": "admin"}))
            .await
            .status(),
        200
    );

    // Deactivation: the user's tokens stop working at once, sign-in is refused.
    let deactivated = patch(&app, &admin, &path, &json!({"is_active": false})).await;
    assert_eq!(deactivated.status(), 200);
    assert_eq!(
        deactivated.json::<Value>().await.unwrap()["is_active"],
        false
    );
    assert_error(
        app.authed_client(access).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    assert_error(refresh, 401, "unauthorized").await;
    assert_error(app.login("frank", PASSWORD).await, 403, "forbidden").await;

    // Reactivated, the old sessions stay ended; a new sign-in works.
    assert_eq!(
        patch(&app, &admin, &path, &json!({"is_active": true}))
            .await
            .status(),
        200
    );
    assert_error(
        app.authed_client(access).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(app.login("frank", PASSWORD).await.status(), 200);

    let updates = audit_until(
        &app,
        &admin,
        &format!("action=admin.user_update&resource_id={frank}"),
        |e| e.len() == 3,
    )
    .await;
    for event in &updates {
        assert_eq!(event["user_id"], root_id.as_str(), "{event}");
        assert_eq!(event["username"], "root");
        assert_eq!(event["resource_type"], "user");
        assert_eq!(event["outcome"], "success");
        assert_eq!(event["user_agent"], AGENT);
        assert_eq!(event["ip"], "127.0.0.1");
        assert_eq!(event["details"]["username"], "frank");
    }
    assert_eq!(
        updates[2]["details"]["changes"],
        json!({"subscription_plan": {"from": "free", "to": "pro"}})
    );
    assert_eq!(
        updates[1]["details"]["changes"],
        json!({"is_active": {"from": true, "to": false}})
    );
    assert_eq!(updates[1]["details"]["sessions_revoked"], 1);
    assert_eq!(
        updates[0]["details"]["changes"],
        json!({"is_active": {"from": false, "to": true}})
    );
    let refused = audit_until(
        &app,
        &admin,
        &format!("user={frank}&action=auth.login_failed"),
        |e| e.len() == 1,
    )
    .await;
    assert_eq!(
        (&refused[0]["outcome"], &refused[0]["details"]["reason"]),
        (&json!("denied"), &json!("deactivated"))
    );
}

#[actix_web::test]
async fn template_changes_by_admins_and_attempts_by_others_are_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let user = app.user_token("trudy").await;

    let created = app
        .authed_client(&admin)
        .post("/api/v1/templates", &custom_template("postgres"))
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let updated = app
        .authed_client(&admin)
        .put("/api/v1/templates/postgres", &json!({"status": "beta"}))
        .await;
    assert_eq!(updated.status(), 200);
    let refused = app
        .authed_client(&user)
        .delete("/api/v1/templates/postgres")
        .await;
    assert_error(refused, 403, "forbidden").await;
    let deprecated = app
        .authed_client(&admin)
        .delete(&format!("/api/v1/templates/{id}"))
        .await;
    assert_eq!(deprecated.status(), 200);

    let events = audit_until(&app, &admin, "resource_type=template", |e| e.len() == 4).await;
    assert_eq!(
        actions(&events),
        [
            "admin.template_deprecate",
            "admin.template_deprecate",
            "admin.template_update",
            "admin.template_create"
        ]
    );
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["username"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["resource_id"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("root", "success", id.as_str()),
            ("trudy", "denied", "-"),
            ("root", "success", id.as_str()),
            ("root", "success", id.as_str()),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e["details"]["template"] == "postgres")
    );
}
