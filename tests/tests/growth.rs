//! What the writer keeps does not grow without bound: the document rows of deleted
//! identities are pruned once their deletes were re-checked, and never from under a
//! transaction that is queueing them.

use std::collections::BTreeMap;

use edge_tests::core::{basic_project, TraitVal};
use edge_tests::identities::stored_identity_items;
use edge_tests::wait;
use edge_tests::writer::InProcessWriter;
use edge_writer::capture::ChangeSpan;
use edge_writer::doc_key::DocKey;
use edge_writer::state::{pending, prune};

use edge_tests::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_identitys_document_row_is_pruned_after_its_delete_was_rechecked() {
    let (db, tables, core) = setup().await;
    let (_, _, env) = basic_project(&core, "envPrune").await;
    let gone = core.create_identity(env, "gone").await;
    let kept = core.create_identity(env, "kept").await;
    core.set_trait(gone, "a", TraitVal::Int(1)).await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("both identities on the edge", wait::DEFAULT, || async {
        (stored_identity_items(&tables).await.len() == 2).then_some(())
    })
    .await;

    core.delete_identity(gone).await;
    let doc = format!("identity:{gone}");
    // Deleted from DynamoDB, and the delete re-checked (its item records forgotten).
    wait::until_ok("the delete and its re-check", wait::DEFAULT, || async {
        let items = stored_identity_items(&tables).await;
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM edge.document_item WHERE doc_key = $1)
                  + (SELECT count(*) FROM edge.pending WHERE doc_key = $1)",
        )
        .bind(&doc)
        .fetch_one(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
        (items.len() == 1 && left == 0)
            .then_some(())
            .ok_or(format!("{} items, {left} records left", items.len()))
    })
    .await;
    writer.stop().await;
    let rows = |key: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM edge.document WHERE doc_key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(rows(doc.clone()).await, 1);

    // A transaction queueing the document holds pruning off; what it queued is then kept.
    let mut queueing = db.pool.begin().await.unwrap();
    let now = chrono::Utc::now();
    let docs: BTreeMap<DocKey, ChangeSpan> = [(
        DocKey::Identity(gone),
        ChangeSpan {
            first: now,
            last: now,
        },
    )]
    .into();
    pending::enqueue(&mut queueing, &docs).await.unwrap();
    assert_eq!(prune::gone_identities(&db.pool, 100).await.unwrap(), 0);
    queueing.commit().await.unwrap();
    assert_eq!(prune::gone_identities(&db.pool, 100).await.unwrap(), 0);
    assert_eq!(
        rows(doc.clone()).await,
        1,
        "a queued document keeps its row"
    );

    // Once it is projected (nothing to write: its queue row goes), the writer prunes the row
    // (at start, then once a minute); the live identity's row stays.
    sqlx::query("DELETE FROM edge.pending WHERE doc_key = $1")
        .bind(&doc)
        .execute(&db.pool)
        .await
        .unwrap();
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("the writer to prune the row", wait::DEFAULT, || async {
        (rows(doc.clone()).await == 0).then_some(())
    })
    .await;
    writer.stop().await;
    assert_eq!(rows(format!("identity:{kept}")).await, 1);
    assert_eq!(prune::gone_identities(&db.pool, 100).await.unwrap(), 0);
    db.drop_db().await;
}
