//! Issue 6 acceptance: `v1-objects` changes applied to the v2 stand-in
//! (real HTTP) with a real `v1-mappings` bucket on NATS. Redelivery is played
//! by a small loop: `Retry` goes to the back of the queue until a budget is
//! spent, like the consumer's delayed redelivery and dead-lettering.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use lfx_sync::sync::consumer::Rejection;
use lfx_sync::sync::v2::client::{Service, V2Client};
use lfx_sync::sync::v2::handlers::{
    KvChange, Operation, SLUG_TO_UID_SUBJECT, SyncFail, UserDirectory, V2Settings, V2Sync,
};
use lfx_sync::sync::v2::mapping::Fields;
use lfx_sync::sync::v2::store::MappingStore;
use serde_json::{Value, json};

use crate::common;
use crate::v2_standin::{Fault, SERVICE_PRINCIPAL, Seen, Setup, setup};

const OWN: &str = "auth0-sync-client@clients";
const ROOT_UID: &str = "root-project-uid";
/// Deliveries before a retried change is dead-lettered.
const BUDGET: u32 = 12;

pub const P1: &str = "a0941000000000001AAA";
pub const P2: &str = "a0941000000000002AAA";
pub const P3: &str = "a0941000000000003AAA";
pub const C1: &str = "a0R5G0000000000001";
pub const C2: &str = "a0R5G0000000000002";
pub const M1: &str = "a0Q5G0000000000001";
pub const M2: &str = "a0Q5G0000000000002";
const CONTACT1: &str = "0035G0000000000101";

struct World {
    t: Setup,
    sync: V2Sync,
    kv: kv::Store,
    responder: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.responder.abort();
    }
}

/// Answers `slug_to_uid` for ROOT as project-service does (every test alike).
pub async fn root_responder(client: &async_nats::Client) -> tokio::task::JoinHandle<()> {
    let mut requests = client.subscribe(SLUG_TO_UID_SUBJECT).await.unwrap();
    let replier = client.clone();
    let responder = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = replier.publish(reply, ROOT_UID.into()).await;
            }
        }
    });
    client.flush().await.unwrap();
    responder
}

pub fn v2_sync(
    t: &Setup,
    nats: async_nats::Client,
    mappings: kv::Store,
    timeout: Duration,
    dry_run: bool,
) -> V2Sync {
    v2_sync_as(t, nats, mappings, timeout, dry_run, None)
}

/// `users`: where v1 user ids become the usernames writes impersonate.
pub fn v2_sync_as(
    t: &Setup,
    nats: async_nats::Client,
    mappings: kv::Store,
    timeout: Duration,
    dry_run: bool,
    users: Option<UserDirectory>,
) -> V2Sync {
    let v2 = V2Client::new(Arc::clone(&t.signer), SERVICE_PRINCIPAL.into(), timeout).unwrap();
    V2Sync::new(
        v2,
        Service::projects(&t.standin.url()),
        Service::committees(&t.standin.url()),
        MappingStore::new(mappings),
        nats,
        V2Settings {
            own_principal: OWN.into(),
            skip_notification: true,
            dry_run,
            users,
        },
    )
}

async fn world(timeout: Duration) -> World {
    world_with(timeout, false).await
}

async fn world_with(timeout: Duration, dry_run: bool) -> World {
    let t = setup(timeout).await;
    let (client, js) = common::js().await;
    let (_, kv) = common::new_bucket(&js, 1 << 20).await;
    let responder = root_responder(&client).await;
    let sync = v2_sync(&t, client, kv.clone(), timeout, dry_run);
    World {
        t,
        sync,
        kv,
        responder,
    }
}

impl World {
    async fn mapping(&self, key: &str) -> Option<String> {
        self.kv
            .get(key)
            .await
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// Applies the changes with redelivery; outcomes and dead letters.
    async fn replay(&self, changes: &[KvChange]) -> (HashMap<&'static str, usize>, Vec<Rejection>) {
        let mut queue: VecDeque<(KvChange, u32)> =
            changes.iter().cloned().map(|c| (c, 1)).collect();
        let mut outcomes = HashMap::new();
        let mut dead = Vec::new();
        while let Some((change, deliveries)) = queue.pop_front() {
            match self.sync.apply(&change).await {
                Ok(outcome) => *outcomes.entry(outcome).or_insert(0) += 1,
                Err(SyncFail::Retry(_)) if deliveries < BUDGET => {
                    queue.push_back((change, deliveries + 1));
                }
                Err(SyncFail::Retry(why)) => dead.push(Rejection::new("retries_exhausted", why)),
                Err(SyncFail::Reject(rejection)) => dead.push(rejection),
            }
        }
        (outcomes, dead)
    }

    fn writes_since(&self, from: usize) -> Vec<Seen> {
        self.t.standin.seen()[from..]
            .iter()
            .filter(|s| s.method != "GET")
            .cloned()
            .collect()
    }

    fn project(&self, slug: &str) -> Fields {
        self.t
            .standin
            .projects()
            .into_iter()
            .find(|p| p["slug"] == slug)
            .unwrap_or_else(|| panic!("no project {slug}"))
    }
}

fn put(key: String, row: Value) -> KvChange {
    KvChange {
        key,
        operation: Operation::Put(row.as_object().cloned().unwrap()),
    }
}

fn project_row(sfid: &str, slug: &str, parent: Option<&str>, stage: &str) -> Value {
    let mut row = json!({
        "sfid": sfid, "name": slug.to_uppercase(), "slug__c": slug,
        "mission_statement": format!("{slug} mission"),
        "description__c": format!("{slug} project"), "project_status__c": stage,
        "lastmodifiedbyid": "0051T000008Xyz1QAC", "isdeleted": false,
    });
    if let Some(parent) = parent {
        row["parent_project__c"] = json!(parent);
        row["parent_entity_relationship__c"] = json!(parent);
    }
    row
}

fn project(sfid: &str, slug: &str, parent: Option<&str>, stage: &str) -> KvChange {
    put(
        format!("salesforce-project__c.{sfid}"),
        project_row(sfid, slug, parent, stage),
    )
}

fn committee_row(sfid: &str, project: &str, name: &str, kind: &str) -> Value {
    json!({
        "sfid": sfid, "project_name__c": project, "mailing_list__c": name, "type__c": kind,
        "enable_voting__c": true, "lastmodifiedbyid": "0051T000008Xyz1QAC",
    })
}

fn committee(sfid: &str, project: &str, name: &str, kind: &str) -> KvChange {
    put(
        format!("platform-collaboration__c.{sfid}"),
        committee_row(sfid, project, name, kind),
    )
}

fn member(sfid: &str, committee: &str, email: &str, contact: &str) -> KvChange {
    put(
        format!("platform-community__c.{sfid}"),
        json!({
            "sfid": sfid, "collaboration_name__c": committee, "contactemail__c": email,
            "contact_name__c": contact, "role__c": "Chair", "start_date__c": "2023-01-08",
        }),
    )
}

/// Children first, parents last: the worst order a replay can bring.
pub fn bucket() -> Vec<KvChange> {
    // The root project has no description in v1.
    let mut alpha = project_row(P1, "alpha", None, "Active");
    alpha.as_object_mut().unwrap().remove("description__c");
    vec![
        member(M2, C2, "b@example.org", "Contact 2"),
        committee(
            C2,
            P3,
            "Technical Advisory Council",
            "Technical Oversight Committee/Technical Advisory Committee",
        ),
        project(P3, "gamma", Some(P2), "Prospect"),
        member(M1, C1, "a@example.org", CONTACT1),
        committee(C1, P2, "TSC", "Technical Steering Committee"),
        project(P2, "beta", Some(P1), "Active"),
        put(format!("salesforce-project__c.{P1}"), alpha),
    ]
}

#[tokio::test]
async fn replay_creates_everything_once_with_parents_and_mappings() {
    let w = world(Duration::from_secs(5)).await;
    let (outcomes, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("created"), Some(&7), "{outcomes:?}");

    let (alpha, beta, gamma) = (w.project("alpha"), w.project("beta"), w.project("gamma"));
    assert_eq!(alpha["parent_uid"], ROOT_UID);
    assert_eq!(alpha["description"], "", "required by project-service");
    assert_eq!(beta["parent_uid"], alpha["uid"]);
    assert_eq!(beta["legal_parent_uid"], alpha["uid"]);
    assert_eq!(gamma["parent_uid"], beta["uid"]);
    // public: Active under ROOT, Active under a public parent; not Active.
    assert_eq!(
        [&alpha["public"], &beta["public"], &gamma["public"]],
        [&json!(true), &json!(true), &json!(false)]
    );
    let uid = |p: &Fields| p["uid"].as_str().unwrap().to_string();
    for (sfid, p) in [(P1, &alpha), (P2, &beta), (P3, &gamma)] {
        assert_eq!(
            w.mapping(&format!("project.sfid.{sfid}")).await,
            Some(uid(p))
        );
        assert_eq!(
            w.mapping(&format!("project.uid.{}", uid(p)))
                .await
                .as_deref(),
            Some(sfid)
        );
    }

    let c1 = w.mapping(&format!("committee.sfid.{C1}")).await.unwrap();
    let c2 = w.mapping(&format!("committee.sfid.{C2}")).await.unwrap();
    assert_eq!(
        w.mapping(&format!("committee.uid.{c1}")).await,
        Some(format!("{P2}:{C1}"))
    );
    assert_eq!(
        w.mapping(&format!("committee.uid.{c2}")).await,
        Some(format!("{P3}:{C2}"))
    );
    let seen = w.t.standin.seen();
    let c2_post = seen
        .iter()
        .find(|s| {
            s.method == "POST"
                && s.body
                    .as_ref()
                    .is_some_and(|b| b["project_uid"] == gamma["uid"])
        })
        .unwrap();
    assert_eq!(
        c2_post.body.as_ref().unwrap()["category"],
        "Technical Advisory Committee"
    );

    let m1 = w
        .mapping(&format!("committee_member.sfid.{M1}"))
        .await
        .unwrap();
    let (m1_committee, m1_uid) = m1.split_once(':').unwrap();
    assert_eq!(m1_committee, c1);
    assert_eq!(
        w.mapping(&format!("committee_member.record_sfid.{m1_uid}"))
            .await
            .as_deref(),
        Some(M1)
    );
    assert_eq!(
        w.mapping(&format!("committee_member.uid.{m1_uid}")).await,
        Some(format!("{P2}:{C1}:{CONTACT1}"))
    );
    // "Contact 2" is not a contact sfid: no reverse mappings for M2.
    let m2 = w
        .mapping(&format!("committee_member.sfid.{M2}"))
        .await
        .unwrap();
    let (m2_committee, m2_uid) = m2.split_once(':').unwrap();
    assert_eq!(m2_committee, c2);
    assert_eq!(
        w.mapping(&format!("committee_member.uid.{m2_uid}")).await,
        None
    );
    assert_eq!(w.t.standin.members().len(), 2);

    // Every token verified, with the service's audience and our principal;
    // member creation skips notifications; no write without X-Sync: false.
    for s in seen.iter() {
        let audience = if s.target.starts_with("/projects") {
            "lfx-v2-project-service"
        } else {
            "lfx-v2-committee-service"
        };
        assert_eq!(s.audience.as_deref(), Some(audience), "{s:?}");
        assert_eq!(s.principal.as_deref(), Some(SERVICE_PRINCIPAL), "{s:?}");
        assert_eq!(s.x_sync.as_deref(), Some("false"), "{s:?}");
        if s.method == "POST" && s.target.contains("/members") {
            assert_eq!(s.skip_notification.as_deref(), Some("true"));
        }
    }

    // Replaying the same bucket changes nothing.
    let before = seen.len();
    let (outcomes, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("unchanged"), Some(&7), "{outcomes:?}");
    let writes = w.writes_since(before);
    assert!(
        writes.is_empty(),
        "a second replay writes nothing: {writes:?}"
    );
}

#[tokio::test]
async fn one_field_update_is_one_put_and_absent_booleans_keep_v2_values() {
    let w = world(Duration::from_secs(5)).await;
    let (_, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    let beta = w.project("beta");
    let path = format!("/projects/{}", beta["uid"].as_str().unwrap());
    let tag = w.t.client.get(&w.t.projects, &path).await.unwrap().etag;

    let mut row = project_row(P2, "beta", Some(P1), "Active");
    row["description__c"] = json!("a new description");
    let before = w.t.standin.seen().len();
    let (outcomes, dead) = w
        .replay(&[put(format!("salesforce-project__c.{P2}"), row.clone())])
        .await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("updated"), Some(&1));
    let writes = w.writes_since(before);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PUT");
    assert_eq!(writes[0].target, path);
    assert_eq!(writes[0].if_match.as_deref(), Some(tag.as_str()));
    let mut expected = beta.clone();
    expected.insert("description".into(), json!("a new description"));
    assert_eq!(
        writes[0].body,
        Some(Value::Object(expected)),
        "only the description changes"
    );

    // Someone sets a flag in v2; v1 does not carry it: nothing is reset.
    let current = w.t.client.get(&w.t.projects, &path).await.unwrap();
    let mut flagged = current.record.clone();
    flagged.insert("autojoin_enabled".into(), json!(true));
    w.t.client
        .update(
            &w.t.projects,
            &path,
            &current.etag,
            &flagged,
            "someone",
            &[],
        )
        .await
        .unwrap();
    let before = w.t.standin.seen().len();
    let (outcomes, _) = w
        .replay(&[put(format!("salesforce-project__c.{P2}"), row)])
        .await;
    assert_eq!(outcomes.get("unchanged"), Some(&1), "{outcomes:?}");
    let writes = w.writes_since(before);
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(w.project("beta")["autojoin_enabled"], json!(true));
}

#[tokio::test]
async fn deletions_tombstones_and_own_writes() {
    let w = world(Duration::from_secs(5)).await;
    let (_, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    let gamma_uid = w.project("gamma")["uid"].as_str().unwrap().to_string();
    let m1 = w
        .mapping(&format!("committee_member.sfid.{M1}"))
        .await
        .unwrap();
    let (c1, m1_uid) = m1.split_once(':').unwrap();

    // Soft delete of a project (its committee C2 goes with it in v2 terms,
    // but v1 tells us separately) and KV DEL of a member.
    let mut gone = project_row(P3, "gamma", Some(P2), "Prospect");
    gone["_sdc_deleted_at"] = json!("2026-12-01T00:00:00Z");
    let before = w.t.standin.seen().len();
    let (outcomes, dead) = w
        .replay(&[
            put(format!("salesforce-project__c.{P3}"), gone),
            KvChange {
                key: format!("platform-community__c.{M1}"),
                operation: Operation::Delete,
            },
        ])
        .await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("deleted"), Some(&2), "{outcomes:?}");
    let writes = w.writes_since(before);
    let targets: Vec<(&str, &str)> = writes
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str()))
        .collect();
    let member_path = format!("/committees/{c1}/members/{m1_uid}?v=1");
    assert_eq!(
        targets,
        [
            ("DELETE", format!("/projects/{gamma_uid}").as_str()),
            ("DELETE", member_path.as_str())
        ]
    );
    assert!(writes.iter().all(|s| s.if_match.is_some()));
    for key in [
        format!("project.sfid.{P3}"),
        format!("project.uid.{gamma_uid}"),
        format!("committee_member.sfid.{M1}"),
        format!("committee_member.record_sfid.{m1_uid}"),
        format!("committee_member.uid.{m1_uid}"),
    ] {
        assert_eq!(w.mapping(&key).await.as_deref(), Some("!del"), "{key}");
    }

    // A tombstoned record is never created again, and a write lfx-sync's own
    // client made (it came from v2) causes no call at all.
    let mut own = project_row("a0941000000000009AAA", "delta", None, "Active");
    own["lastmodifiedbyid"] = json!(OWN);
    let before = w.t.standin.seen().len();
    let (outcomes, dead) = w
        .replay(&[
            project(P3, "gamma", Some(P2), "Prospect"),
            member(M1, C1, "a@example.org", CONTACT1),
            put("salesforce-project__c.a0941000000000009AAA".into(), own),
            KvChange {
                key: "salesforce-project__c.a0941000000000008AAA".into(),
                operation: Operation::Delete,
            },
        ])
        .await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("tombstoned"), Some(&2), "{outcomes:?}");
    assert_eq!(outcomes.get("own_write"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("delete_unmapped"), Some(&1), "{outcomes:?}");
    assert_eq!(w.t.standin.seen().len(), before, "no request at all");
}

#[tokio::test]
async fn faults_and_stale_etags_converge_permanent_errors_dead_letter() {
    let w = world(Duration::from_millis(500)).await;
    w.t.standin.inject([
        Fault::Status(503),
        Fault::Status(429),
        Fault::Delay(Duration::from_millis(900)),
        Fault::Status(500),
        Fault::Status(502),
    ]);
    let (outcomes, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("created"), Some(&7), "{outcomes:?}");
    assert_eq!(w.t.standin.projects().len(), 3);
    assert_eq!(w.t.standin.members().len(), 2);

    // A write in v2 between our GET and PUT: 412, read again, PUT again.
    let mut row = project_row(P2, "beta", Some(P1), "Active");
    row["funding__c"] = json!("Funded");
    // Requests: GET parent (public?), GET beta, then the PUT.
    w.t.standin
        .inject([Fault::Pass, Fault::Pass, Fault::BumpEtags]);
    let before = w.t.standin.seen().len();
    let (outcomes, dead) = w
        .replay(&[put(format!("salesforce-project__c.{P2}"), row)])
        .await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("updated"), Some(&1), "{outcomes:?}");
    let puts: Vec<u16> = w.writes_since(before).iter().map(|s| s.status).collect();
    assert_eq!(puts, [412, 200]);
    assert_eq!(w.project("beta")["funding"], "Funded");

    // Permanent: v2 refuses (duplicate slug, 409) and a row without a
    // committee name: dead letters at once, with the service's answer.
    // A member of a committee that never comes: dead after the budget.
    let before = w.t.standin.seen().len();
    let (outcomes, dead) = w
        .replay(&[
            project("a0941000000000007AAA", "alpha", None, "Active"),
            put(
                "platform-collaboration__c.a0R5G0000000000009".into(),
                json!({"sfid": "a0R5G0000000000009", "project_name__c": P1}),
            ),
            member(
                "a0Q5G0000000000009",
                "a0R5G0000000000404",
                "c@example.org",
                CONTACT1,
            ),
        ])
        .await;
    assert!(outcomes.is_empty(), "{outcomes:?}");
    let reasons: Vec<&str> = dead.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        ["v2_rejected", "invalid_record", "retries_exhausted"]
    );
    assert!(
        dead[0].detail.contains("409") && dead[0].detail.contains("slug already exists"),
        "{}",
        dead[0].detail
    );
    assert!(
        dead[1].detail.contains("mailing_list__c"),
        "{}",
        dead[1].detail
    );
    assert!(
        dead[2].detail.contains("a0R5G0000000000404"),
        "{}",
        dead[2].detail
    );
    let posts = w.writes_since(before);
    assert_eq!(
        posts.len(),
        1,
        "only the refused project was sent: {posts:?}"
    );
}

#[tokio::test]
async fn project_settings_follow_v1_and_keep_v2_lists() {
    let w = world(Duration::from_secs(5)).await;
    let (_, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    let beta = w.project("beta");
    let path = format!("/projects/{}/settings", beta["uid"].as_str().unwrap());
    let settings = w.t.client.get(&w.t.projects, &path).await.unwrap();
    assert_eq!(settings.record["mission_statement"], "beta mission");
    // Writers are managed in v2: a v1 change of the mission keeps them.
    let mut with_writers = settings.record.clone();
    with_writers.insert("writers".into(), json!([{"username": "jdoe"}]));
    w.t.client
        .update(
            &w.t.projects,
            &path,
            &settings.etag,
            &with_writers,
            "someone",
            &[],
        )
        .await
        .unwrap();
    let mut row = project_row(P2, "beta", Some(P1), "Active");
    row["mission_statement"] = json!("a new mission");
    let (outcomes, dead) = w
        .replay(&[put(format!("salesforce-project__c.{P2}"), row)])
        .await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("updated"), Some(&1), "{outcomes:?}");
    let settings = w.t.client.get(&w.t.projects, &path).await.unwrap();
    assert_eq!(settings.record["mission_statement"], "a new mission");
    assert_eq!(settings.record["writers"], json!([{"username": "jdoe"}]));
}

#[tokio::test]
async fn dry_run_sends_no_write_and_stores_no_mapping() {
    let w = world_with(Duration::from_secs(5), true).await;
    let (outcomes, dead) = w.replay(&bucket()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(outcomes.get("dry_run"), Some(&7), "{outcomes:?}");
    assert!(w.writes_since(0).is_empty());
    assert!(w.t.standin.projects().is_empty());
    assert_eq!(w.mapping(&format!("project.sfid.{P1}")).await, None);
}

#[tokio::test]
async fn writes_impersonate_the_v1_user_and_fall_back_to_the_service_principal() {
    let t = setup(Duration::from_secs(5)).await;
    let (client, js) = common::js().await;
    let (_, mappings) = common::new_bucket(&js, 1 << 20).await;
    let (_, objects) = common::new_bucket(&js, -1).await;
    // The v1 user of `project_row`'s lastmodifiedbyid, as the backfill stores it.
    let user =
        json!({"sfid": "0051T000008Xyz1QAC", "username": "jdoe", "email": "jdoe@example.org"});
    objects
        .put(
            "salesforce-merged_user.0051T000008Xyz1QAC",
            serde_json::to_vec(&user).unwrap().into(),
        )
        .await
        .unwrap();
    let responder = root_responder(&client).await;
    let users = UserDirectory::new(objects, "", "username");
    let sync = v2_sync_as(
        &t,
        client,
        mappings,
        Duration::from_secs(5),
        false,
        Some(users),
    );

    assert_eq!(
        sync.apply(&project(P1, "known", None, "Active"))
            .await
            .unwrap(),
        "created"
    );
    let mut unknown = project_row(P2, "unknown", None, "Active");
    unknown["lastmodifiedbyid"] = json!("0051T000008NoUserAA");
    let unknown = put(format!("salesforce-project__c.{P2}"), unknown);
    assert_eq!(sync.apply(&unknown).await.unwrap(), "created");
    let mut not_a_user = project_row(P3, "automation", None, "Active");
    not_a_user["lastmodifiedbyid"] = json!("integration bot");
    let not_a_user = put(format!("salesforce-project__c.{P3}"), not_a_user);
    assert_eq!(sync.apply(&not_a_user).await.unwrap(), "created");

    let posts: Vec<(String, Option<String>)> = t
        .standin
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.target.starts_with("/projects"))
        .map(|s| {
            (
                s.body
                    .as_ref()
                    .map(|b| b["slug"].to_string())
                    .unwrap_or_default(),
                s.principal,
            )
        })
        .collect();
    assert_eq!(
        posts,
        vec![
            ("\"known\"".to_string(), Some("jdoe".to_string())),
            (
                "\"unknown\"".to_string(),
                Some(SERVICE_PRINCIPAL.to_string())
            ),
            (
                "\"automation\"".to_string(),
                Some(SERVICE_PRINCIPAL.to_string())
            ),
        ]
    );
    // Reads stay with the service principal.
    for s in t.standin.seen().iter().filter(|s| s.method == "GET") {
        assert_eq!(s.principal.as_deref(), Some(SERVICE_PRINCIPAL), "{s:?}");
    }
    responder.abort();
}
