//! Sign-in limits. At their defaults, as people and attackers meet them (issue 13,
//! point 2): a new user never meets one, five wrong passwords lock one address out
//! with a 423, a stranger with many addresses neither keeps the owner out nor gets
//! more guesses than the README says, and a carrier NAT's users share one address.
//! Then each limit on its own: wrong passwords per account, failures per address.

use crate::helpers::{PASSWORD, TestApp, assert_error};
use crate::ratelimit::assert_limited;
use serde_json::{Value, json};

const WRONG: &str = "Wrong-password-1";

/// Requests as if from `from`: the test app trusts 127.0.0.1 as a proxy.
async fn spawn() -> TestApp {
    TestApp::spawn_with(&[("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1")]).await
}

async fn post_from(app: &TestApp, from: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-forwarded-for", from)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn register_from(app: &TestApp, from: &str, username: &str) -> reqwest::Response {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": PASSWORD,
    });
    post_from(app, from, "/api/v1/auth/register", body).await
}

async fn login_from(app: &TestApp, from: &str, login: &str, password: &str) -> reqwest::Response {
    let body = json!({"username_or_email": login, "password": password});
    post_from(app, from, "/api/v1/auth/login", body).await
}

/// Refreshes `session` in place (a refresh token works once); returns the status.
async fn refresh_from(app: &TestApp, from: &str, session: &mut Value) -> u16 {
    let body = json!({"refresh_token": session["refresh_token"]});
    let response = post_from(app, from, "/api/v1/auth/refresh", body).await;
    let status = response.status().as_u16();
    if status == 200 {
        let tokens: Value = response.json().await.unwrap();
        session["refresh_token"] = tokens["refresh_token"].clone();
        session["access_token"] = tokens["access_token"].clone();
    }
    status
}

async fn ok(response: reqwest::Response, status: u16, what: &str) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{what}: {body}");
    body
}

#[actix_web::test]
async fn a_new_user_with_typos_three_devices_and_a_day_of_refreshes_never_meets_a_limit() {
    let app = spawn().await;
    let home = "198.51.100.20";
    ok(register_from(&app, home, "newbie").await, 201, "register").await;
    for typo in ["correct-horse-9", "Correct-horse-8"] {
        ok(login_from(&app, home, "newbie", typo).await, 401, "typo").await;
    }
    // A phone, a laptop and a tablet; the phone signs in again on the move.
    let mut devices = Vec::new();
    for from in [home, home, home, "203.0.113.20"] {
        devices.push(
            ok(
                login_from(&app, from, "newbie", PASSWORD).await,
                200,
                "sign-in",
            )
            .await,
        );
    }
    // Every device refreshes every half hour for a day, all from home.
    for round in 0..48 {
        for session in &mut devices {
            let status = refresh_from(&app, home, session).await;
            assert_eq!(status, 200, "refresh round {round}");
        }
    }
    let me = app
        .authed_client(devices[0]["access_token"].as_str().unwrap())
        .get("/api/v1/auth/me")
        .await;
    ok(me, 200, "me").await;
    // Refreshing all day did not spend sign-ins: a fourth device still signs in.
    ok(
        login_from(&app, home, "newbie", PASSWORD).await,
        200,
        "sign-in after",
    )
    .await;
}

#[actix_web::test]
async fn five_wrong_passwords_from_one_address_lock_it_with_the_time_left() {
    let app = spawn().await;
    let here = "198.51.100.30";
    ok(register_from(&app, here, "typist").await, 201, "register").await;
    for _ in 1..=4 {
        let response = login_from(&app, here, "typist", WRONG).await;
        assert_error(response, 401, "unauthorized").await;
    }
    let fifth = login_from(&app, here, "typist", WRONG).await;
    let body = assert_error(fifth, 423, "account_locked").await;
    assert!(
        body["detail"].as_str().unwrap().contains("15 more minutes"),
        "{body}"
    );
    // The right password from there waits too, and is told how long; so do more
    // tries, which never turn into a 429.
    for _ in 0..5 {
        let response = login_from(&app, here, "typist", PASSWORD).await;
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((800..=900).contains(&retry_after), "{retry_after}");
        let body = assert_error(response, 423, "account_locked").await;
        assert_eq!(body["context"]["retry_after_seconds"], retry_after);
    }
    // Only that address is locked.
    ok(
        login_from(&app, "198.51.100.31", "typist", PASSWORD).await,
        200,
        "elsewhere",
    )
    .await;
}

#[actix_web::test]
async fn a_stranger_with_many_addresses_does_not_keep_the_owner_out() {
    let app = spawn().await;
    let home = "198.51.100.40";
    let mut session = ok(register_from(&app, home, "owner").await, 201, "register").await;
    let app = &app;
    let guess = |n: usize| async move {
        let from = format!("203.0.113.{n}");
        login_from(app, &from, "owner", WRONG).await.status()
    };
    // The stranger spends the account's budget for addresses it does not know...
    let mut refused = 0;
    for n in 1..=40 {
        if guess(n).await == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 30, "the budget is 10 wrong passwords");
    // ...and keeps guessing while the owner signs in, ten times, from home.
    for attempt in 0..10 {
        assert_eq!(guess(41 + attempt).await, 429);
        let response = login_from(app, home, "owner", PASSWORD).await;
        ok(response, 200, &format!("owner's sign-in {attempt}")).await;
    }
    // The owner's sessions keep working: requests and refreshes.
    let me = app
        .authed_client(session["access_token"].as_str().unwrap())
        .get("/api/v1/auth/me")
        .await;
    ok(me, 200, "me").await;
    assert_eq!(refresh_from(app, "192.0.2.99", &mut session).await, 200);
    // The price: from an address the account has not signed in from, even the
    // right password waits until the budget comes back.
    let new_place = login_from(app, "192.0.2.1", "owner", PASSWORD).await;
    let body = assert_error(new_place, 429, "rate_limited").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("wrong passwords for this account"),
        "{body}"
    );
    let wait = body["context"]["retry_after_seconds"].as_u64().unwrap();
    assert!(
        (1..=360).contains(&wait),
        "one comes back every 6 minutes: {wait}"
    );
}

#[actix_web::test]
async fn an_attacker_with_many_addresses_gets_ten_guesses_then_one_every_six_minutes() {
    let app = spawn().await;
    ok(
        register_from(&app, "198.51.100.50", "target").await,
        201,
        "register",
    )
    .await;
    let mut checked = 0;
    let mut waits = Vec::new();
    // Four wrong passwords from each of 25 addresses: under any one address's lockout.
    for n in 0..100 {
        let from = format!("10.{}.0.1", n / 4);
        let response = login_from(&app, &from, "target", WRONG).await;
        match response.status().as_u16() {
            401 => checked += 1,
            429 => {
                let body = assert_error(response, 429, "rate_limited").await;
                waits.push(body["context"]["retry_after_seconds"].as_u64().unwrap());
            }
            other => panic!("guess {n}: {other}"),
        }
    }
    assert_eq!(checked, 10, "README: 10 at once");
    assert!(waits.iter().all(|w| (1..=360).contains(w)), "{waits:?}");
    // A correct guess from a new address is not even checked.
    let lucky = login_from(&app, "10.99.0.1", "target", PASSWORD).await;
    assert_error(lucky, 429, "rate_limited").await;
    // Other accounts are not affected.
    ok(
        register_from(&app, "198.51.100.51", "bystander").await,
        201,
        "register",
    )
    .await;
    ok(
        login_from(&app, "10.0.0.1", "bystander", PASSWORD).await,
        200,
        "bystander",
    )
    .await;
}

#[actix_web::test]
async fn people_behind_one_carrier_nat_sign_up_and_in_without_meeting_a_limit() {
    let app = spawn().await;
    let nat = "100.64.0.1";
    // A busy hour on one carrier address: 40 people sign in on a new phone, each
    // after a typo, and their apps refresh; half of them sign up there first, the
    // others signed up at home.
    for n in 0..40 {
        let name = format!("phone{n}");
        let signed_up_at = if n < 20 {
            nat.to_owned()
        } else {
            format!("192.0.2.{n}")
        };
        let response = register_from(&app, &signed_up_at, &name).await;
        ok(response, 201, &name).await;
        ok(login_from(&app, nat, &name, WRONG).await, 401, &name).await;
        let mut session = ok(login_from(&app, nat, &name, PASSWORD).await, 200, &name).await;
        assert_eq!(refresh_from(&app, nat, &mut session).await, 200, "{name}");
    }
}

// Each sign-in limit on its own, set tight.

#[actix_web::test]
async fn wrong_passwords_are_limited_per_account_from_any_address() {
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "3/1h"),
    ])
    .await;
    app.signed_up("victim").await;
    app.signed_up("bystander").await;

    // Three guesses from three addresses, by username and by e-mail: one account.
    for (n, login) in ["victim", "VICTIM", "victim@example.com"]
        .iter()
        .enumerate()
    {
        let from = format!("198.51.100.{}", n + 1);
        let response = login_from(&app, &from, login, WRONG).await;
        assert_error(response, 401, "unauthorized").await;
    }
    // A fourth address, even with the right password, waits.
    let refused = login_from(&app, "198.51.100.4", "victim", PASSWORD).await;
    let retry_after = assert_limited(refused, 3).await;
    assert!((1..=1200).contains(&retry_after), "{retry_after}");

    // Other accounts from the same address are not affected.
    let other = login_from(&app, "198.51.100.4", "bystander", PASSWORD).await;
    assert_eq!(other.status(), 200);
    // Nor is the address the victim signed up from (127.0.0.1, not forwarded).
    assert_eq!(app.login("victim", PASSWORD).await.status(), 200);
}

#[actix_web::test]
async fn failed_sign_ins_are_limited_per_address_and_right_passwords_cost_nothing() {
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", "3/1h"),
    ])
    .await;
    for name in ["ann", "ben", "cat"] {
        app.signed_up(name).await;
    }
    let sprayer = "203.0.113.9";
    let from_sprayer =
        |login: &'static str, password: &'static str| login_from(&app, sprayer, login, password);
    // Failures count, on any account and on no account at all; a right password
    // in between costs nothing.
    assert_eq!(from_sprayer("nobody", WRONG).await.status(), 401);
    assert_eq!(from_sprayer("ann", WRONG).await.status(), 401);
    assert_eq!(from_sprayer("ben", PASSWORD).await.status(), 200);
    assert_eq!(from_sprayer("x@example.com", WRONG).await.status(), 401);
    assert_limited(from_sprayer("nobody_else", WRONG).await, 3).await;
    // Until the budget is back, a right password for an account new to the address
    // waits too (it cannot be told from a guess before it is checked)...
    assert_limited(from_sprayer("cat", PASSWORD).await, 3).await;
    // ...but an account that signed in from there before is not held back.
    assert_eq!(from_sprayer("ben", PASSWORD).await.status(), 200);
    // Another address has its own budget.
    let elsewhere = login_from(&app, "203.0.113.10", "nobody", WRONG).await;
    assert_eq!(elsewhere.status(), 401);
}
