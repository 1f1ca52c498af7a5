// @generated automatically by Diesel CLI.

diesel::table! {
    app_runs (id) {
        id -> Uuid,
        app_id -> Uuid,
        action -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        exit_status -> Nullable<Int4>,
        output -> Text,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    apps (id) {
        id -> Uuid,
        user_id -> Uuid,
        project_id -> Uuid,
        server_id -> Uuid,
        name -> Text,
        path -> Text,
        compose_file -> Nullable<Text>,
        url -> Nullable<Text>,
        auto_stop_minutes -> Int4,
        status -> Text,
        status_message -> Nullable<Text>,
        stops_at -> Nullable<Timestamptz>,
        services_running -> Nullable<Int4>,
        last_checked -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        action -> Text,
        resource_type -> Text,
        resource_id -> Nullable<Text>,
        details -> Jsonb,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        outcome -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    auth_sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    email_verifications (user_id) {
        user_id -> Uuid,
        email -> Text,
        code_hash -> Text,
        attempts -> Int4,
        sent_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    environment_activity (environment_id) {
        environment_id -> Uuid,
        kind -> Text,
        session -> Nullable<Text>,
        client_address -> Nullable<Text>,
        awake_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    environment_logs (environment_id, seq) {
        environment_id -> Uuid,
        seq -> Int8,
        line -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    environment_orders (id) {
        id -> Uuid,
        environment_id -> Uuid,
        instruction -> Jsonb,
        created_at -> Timestamptz,
        claimed_by -> Nullable<Uuid>,
        claimed_at -> Nullable<Timestamptz>,
        answer -> Nullable<Jsonb>,
        answered_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    environments (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        slug -> Text,
        template_id -> Uuid,
        provider -> Text,
        region -> Text,
        size -> Text,
        status -> Text,
        phase -> Text,
        progress -> Int4,
        status_message -> Nullable<Text>,
        resource_limits -> Jsonb,
        environment_variables -> Jsonb,
        ip_address -> Nullable<Text>,
        ssh_port -> Nullable<Int4>,
        ssh_user -> Nullable<Text>,
        host_public_key -> Nullable<Text>,
        host_private_key -> Nullable<Bytea>,
        user_public_key -> Nullable<Text>,
        user_private_key -> Nullable<Bytea>,
        provider_ref -> Nullable<Text>,
        log_seq -> Int8,
        lease_owner -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        started_at -> Nullable<Timestamptz>,
        stopped_at -> Nullable<Timestamptz>,
        last_accessed -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        auto_stop_minutes -> Nullable<Int4>,
    }
}

diesel::table! {
    login_failures (user_id, client_ip) {
        user_id -> Uuid,
        client_ip -> Text,
        failures -> Int4,
        locked_until -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    mail_outbox (id) {
        id -> Uuid,
        kind -> Text,
        recipient -> Text,
        subject -> Text,
        text_body -> Text,
        html_body -> Text,
        created_at -> Timestamptz,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        failed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    password_resets (token_hash) {
        token_hash -> Text,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    projects (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        description -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Uuid,
        session_id -> Uuid,
        issued_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    servers (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        host -> Text,
        port -> Int4,
        username -> Text,
        auth_type -> Text,
        private_key -> Bytea,
        public_key -> Text,
        host_key -> Nullable<Text>,
        presented_host_key -> Nullable<Text>,
        status -> Text,
        status_message -> Nullable<Text>,
        last_checked -> Nullable<Timestamptz>,
        facts -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    templates (id) {
        id -> Uuid,
        name -> Text,
        display_name -> Text,
        description -> Text,
        category -> Text,
        tags -> Jsonb,
        docker_image -> Text,
        default_resources -> Jsonb,
        environment_variables -> Jsonb,
        startup_commands -> Jsonb,
        bootstrap -> Text,
        packages -> Jsonb,
        cloud_init -> Jsonb,
        default_port -> Nullable<Int4>,
        documentation_url -> Nullable<Text>,
        icon_url -> Nullable<Text>,
        status -> Text,
        version -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        username -> Text,
        email -> Text,
        password_hash -> Text,
        full_name -> Nullable<Text>,
        subscription_plan -> Text,
        is_active -> Bool,
        is_verified -> Bool,
        last_login -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        google_sub -> Nullable<Text>,
    }
}

diesel::joinable!(app_runs -> apps (app_id));
diesel::joinable!(apps -> projects (project_id));
diesel::joinable!(apps -> servers (server_id));
diesel::joinable!(apps -> users (user_id));
diesel::joinable!(audit_events -> users (user_id));
diesel::joinable!(auth_sessions -> users (user_id));
diesel::joinable!(email_verifications -> users (user_id));
diesel::joinable!(environment_activity -> environments (environment_id));
diesel::joinable!(environment_logs -> environments (environment_id));
diesel::joinable!(environment_orders -> environments (environment_id));
diesel::joinable!(environments -> templates (template_id));
diesel::joinable!(environments -> users (user_id));
diesel::joinable!(login_failures -> users (user_id));
diesel::joinable!(password_resets -> users (user_id));
diesel::joinable!(projects -> users (user_id));
diesel::joinable!(refresh_tokens -> auth_sessions (session_id));
diesel::joinable!(servers -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    app_runs,
    apps,
    audit_events,
    auth_sessions,
    email_verifications,
    environment_activity,
    environment_logs,
    environment_orders,
    environments,
    login_failures,
    mail_outbox,
    password_resets,
    projects,
    refresh_tokens,
    servers,
    templates,
    users,
);
