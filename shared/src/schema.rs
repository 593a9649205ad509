// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "task_status"))]
    pub struct TaskStatus;
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::TaskStatus;

    md5_tasks (task_id) {
        task_id -> Uuid,
        status -> TaskStatus,
        result -> Nullable<Text>,
        file_name -> Text,
        size_bytes -> Int8,
        error -> Nullable<Text>,
        attempts -> Int4,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        logged_at -> Nullable<Timestamptz>,
        worker -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        request_id -> Nullable<Text>,
        algorithms -> Array<Text>,
        expected -> Nullable<Jsonb>,
        digests -> Nullable<Jsonb>,
        owner -> Nullable<Int8>,
    }
}

diesel::table! {
    md5_task_digests (algorithm, digest, finished_at, task_id) {
        algorithm -> Text,
        digest -> Bytea,
        finished_at -> Timestamptz,
        task_id -> Uuid,
    }
}

diesel::table! {
    md5_uploads (task_id) {
        task_id -> Uuid,
        upload_length -> Nullable<Int8>,
        received_bytes -> Int8,
        metadata -> Nullable<Text>,
        client -> Nullable<Text>,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(md5_uploads -> md5_tasks (task_id));
diesel::allow_tables_to_appear_in_same_query!(md5_tasks, md5_uploads);

diesel::table! {
    md5_idempotency_keys (key) {
        key -> Text,
        task_id -> Uuid,
        file_name -> Nullable<Text>,
        size_bytes -> Nullable<Int8>,
        created_at -> Timestamptz,
        reserved_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    md5_api_keys (key_id) {
        key_id -> Int8,
        name -> Text,
        key_hash -> Bytea,
        admin -> Bool,
        quotas -> Jsonb,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        changed_at -> Timestamptz,
    }
}
