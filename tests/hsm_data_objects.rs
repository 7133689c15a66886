//! Regression: `CKO_DATA` objects (NHN secrets) have no `CKA_ID`; the HSM
//! port names them by label for creation, lookup, listing, inspection and
//! destruction. The reconciler reports one that no row names and leaves it
//! (issue 8, item 1: nothing is destroyed on absence alone).
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

#[tokio::test]
async fn data_objects_are_named_by_label() {
    let kms = common::Kms::start().await;
    let hsm = kms.engine.hsm().clone();
    let label = "hsm-kms/regression/secret/1".to_string();
    let id = label.as_bytes().to_vec();
    hsm.create_data_object(label.clone(), b"abc".to_vec())
        .await
        .expect("SoftHSM accepts the template");
    assert_eq!(hsm.read_data_object(id.clone()).await.unwrap(), b"abc");
    let info = hsm.object_info(id.clone()).await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].class, "data");
    assert!(info[0].private && info[0].token && !info[0].modifiable);
    let listed = hsm.list_service_objects().await.unwrap();
    assert!(listed.iter().any(|o| o.id == id && o.label == label));
    // No row names it: the reconciler reports it and leaves it in place.
    let report = kms.engine.reconcile().await.unwrap();
    assert_eq!(report.unknown_objects, 1);
    assert_eq!(hsm.object_info(id.clone()).await.unwrap().len(), 1);
    assert_eq!(hsm.read_data_object(id.clone()).await.unwrap(), b"abc");
    // Destroyed only on an operator's word (`admin reconcile --destroy-orphans --yes`).
    let n = hsm_kms::core::destroy_orphans(&hsm, kms.engine.store())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(hsm.object_info(id.clone()).await.unwrap().is_empty());
    assert!(hsm.read_data_object(id).await.is_err());
    assert_eq!(kms.engine.reconcile().await.unwrap().unknown_objects, 0);
}
