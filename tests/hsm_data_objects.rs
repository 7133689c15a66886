//! Regression: `CKO_DATA` objects (NHN secrets) have no `CKA_ID`; the HSM
//! port names them by label for creation, lookup, listing, inspection,
//! destruction, and the reconciler's orphan sweep.
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
    // No row names it: the reconciler destroys it as an orphan.
    let report = kms.engine.reconcile().await.unwrap();
    assert_eq!(report.orphans_destroyed, 1);
    assert!(hsm.object_info(id.clone()).await.unwrap().is_empty());
    assert!(hsm.read_data_object(id).await.is_err());
}
