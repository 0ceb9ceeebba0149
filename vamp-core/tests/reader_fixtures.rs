//! Conformance: every fixture of Vamp's reader tests (reader-fixtures.md) read with the
//! reader the Scala spec used, asserting the outcome the table gives: `OK` or the exact
//! notification name. Property-level assertions for the OK rows are in `reader_properties.rs`.
//!
//! Rows marked DISABLED in the table (Scala tests commented out at HEAD) assert the outcome
//! derived from the code, as the table gives it.

use vamp_core::dsl::{load_documents, read_import, read_node};
use vamp_core::model::ArtifactKind::{self, *};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reader");

/// (fixture, reader, expected outcome) — transcribed from reader-fixtures.md §2–§8.
const TABLE: &[(&str, ArtifactKind, &str)] = &[
    ("breed/breed1.yml", Breed, "OK"),
    ("breed/breed2.yml", Breed, "OK"),
    ("breed/breed3.yml", Breed, "OK"),
    ("breed/breed4.yml", Breed, "OK"),
    ("breed/breed6.yml", Breed, "OK"),
    ("breed/breed7.yml", Breed, "OK"),
    ("breed/breed8.yml", Breed, "OK"),
    ("breed/breed9.yml", Breed, "OK"),
    ("breed/breed11.yml", Breed, "MissingPortValueError"),
    ("breed/breed12.yml", Breed, "OK"),
    ("breed/breed13.yml", Breed, "OK"),
    ("breed/breed14.yml", Breed, "OK"),
    (
        "breed/breed16.yml",
        Breed,
        "UnresolvedDependencyInTraitValueError",
    ),
    (
        "breed/breed17.yml",
        Breed,
        "UnresolvedDependencyInTraitValueError",
    ),
    ("breed/breed18.yml", Breed, "RecursiveDependenciesError"),
    ("breed/breed19.yml", Breed, "RecursiveDependenciesError"),
    (
        "breed/breed21.yml",
        Breed,
        "UnresolvedDependencyInTraitValueError",
    ),
    ("breed/breed22.yml", Breed, "OK"),
    ("breed/breed23.yml", Breed, "OK"),
    ("breed/breed24.yml", Breed, "OK"),
    ("breed/breed26.yml", Breed, "OK"),
    ("breed/breed27.yml", Breed, "IllegalStrictName"),
    ("breed/breed28.yml", Breed, "IllegalName"),
    ("breed/breed29.yml", Breed, "OK"),
    ("breed/breed31.yml", Breed, "OK"),
    ("breed/breed32.yml", Breed, "InvalidArgumentError"),
    ("breed/breed33.yml", Breed, "InvalidArgumentError"),
    ("breed/breed34.yml", Breed, "InvalidArgumentValueError"),
    ("breed/breed36.yml", Breed, "InconsistentArtifactKind"),
    ("breed/breed37.yml", Breed, "ParserError"),
    ("breed/breed38.yml", Breed, "OK"),
    ("breed/breed39.yml", Breed, "OK"),
    ("breed/breed41.yml", Breed, "NegativeFailuresNumberError"),
    ("blueprint/blueprint1.yml", Blueprint, "OK"),
    ("blueprint/blueprint2.yml", Blueprint, "OK"),
    ("blueprint/blueprint3.yml", Blueprint, "OK"),
    ("blueprint/blueprint4.yml", Blueprint, "OK"),
    ("blueprint/blueprint6.yml", Blueprint, "OK"),
    ("blueprint/blueprint7.yml", Blueprint, "OK"),
    ("blueprint/blueprint8.yml", Blueprint, "OK"),
    ("blueprint/blueprint9.yml", Blueprint, "OK"),
    ("blueprint/blueprint11.yml", Blueprint, "OK"),
    ("blueprint/blueprint12.yml", Blueprint, "OK"),
    ("blueprint/blueprint13.yml", Blueprint, "OK"),
    ("blueprint/blueprint14.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint16.yml",
        Blueprint,
        "EitherReferenceOrAnonymous",
    ),
    ("blueprint/blueprint17.yml", Blueprint, "OK"),
    ("blueprint/blueprint18.yml", Blueprint, "OK"),
    ("blueprint/blueprint19.yml", Blueprint, "OK"),
    ("blueprint/blueprint21.yml", Blueprint, "OK"),
    ("blueprint/blueprint22.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint23.yml",
        Blueprint,
        "UnresolvedGatewayPortError",
    ),
    (
        "blueprint/blueprint24.yml",
        Blueprint,
        "UnresolvedGatewayPortError",
    ),
    ("blueprint/blueprint26.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint27.yml",
        Blueprint,
        "UnresolvedEnvironmentVariableError",
    ),
    (
        "blueprint/blueprint28.yml",
        Blueprint,
        "UnresolvedEnvironmentVariableError",
    ),
    (
        "blueprint/blueprint29.yml",
        Blueprint,
        "UnresolvedEnvironmentVariableError",
    ),
    (
        "blueprint/blueprint31.yml",
        Blueprint,
        "NonUniqueBlueprintBreedReferenceError",
    ),
    (
        "blueprint/blueprint32.yml",
        Blueprint,
        "NonUniqueBlueprintBreedReferenceError",
    ),
    ("blueprint/blueprint33.yml", Blueprint, "OK"),
    ("blueprint/blueprint34.yml", Blueprint, "OK"),
    ("blueprint/blueprint36.yml", Blueprint, "OK"),
    ("blueprint/blueprint37.yml", Blueprint, "OK"),
    ("blueprint/blueprint38.yml", Blueprint, "OK"),
    ("blueprint/blueprint39.yml", Blueprint, "OK"),
    ("blueprint/blueprint41.yml", Blueprint, "OK"),
    ("blueprint/blueprint42.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint43.yml",
        Blueprint,
        "RecursiveDependenciesError",
    ),
    (
        "blueprint/blueprint44.yml",
        Blueprint,
        "RecursiveDependenciesError",
    ),
    ("blueprint/blueprint46.yml", Blueprint, "OK"),
    ("blueprint/blueprint47.yml", Blueprint, "OK"),
    ("blueprint/blueprint49.yml", Blueprint, "NoServiceError"),
    ("blueprint/blueprint51.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint52.yml",
        Blueprint,
        "UnresolvedDependencyInTraitValueError",
    ),
    (
        "blueprint/blueprint53.yml",
        Blueprint,
        "MissingEnvironmentVariableError",
    ),
    ("blueprint/blueprint54.yml", Blueprint, "OK"),
    ("blueprint/blueprint56.yml", Blueprint, "UnexpectedElement"),
    ("blueprint/blueprint57.yml", Blueprint, "OK"),
    ("blueprint/blueprint58.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint59.yml",
        Blueprint,
        "IllegalGatewayStickyValue",
    ),
    ("blueprint/blueprint61.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint62.yml",
        Blueprint,
        "IllegalGatewayStickyValue",
    ),
    ("blueprint/blueprint63.yml", Blueprint, "OK"),
    ("blueprint/blueprint64.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint66.yml",
        Blueprint,
        "ConditionPortTypeError",
    ),
    (
        "blueprint/blueprint67.yml",
        Blueprint,
        "IllegalAnonymousRoutingPortMappingError",
    ),
    ("blueprint/blueprint68.yml", Blueprint, "OK"),
    ("blueprint/blueprint69.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint71.yml",
        Blueprint,
        "ConditionPortTypeError",
    ),
    ("blueprint/blueprint72.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint73.yml",
        Blueprint,
        "GatewayRouteWeightError",
    ),
    (
        "blueprint/blueprint74.yml",
        Blueprint,
        "DuplicateGatewayPortError",
    ),
    ("blueprint/blueprint76.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint77.yml",
        Blueprint,
        "UnresolvedGatewayPortError",
    ),
    ("blueprint/blueprint78.yml", Blueprint, "OK"),
    ("blueprint/blueprint79.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint81.yml",
        Blueprint,
        "InvalidArgumentValueError",
    ),
    ("blueprint/blueprint82.yml", Blueprint, "OK"),
    ("blueprint/blueprint83.yml", Blueprint, "OK"),
    ("blueprint/blueprint84.yml", Blueprint, "OK"),
    ("blueprint/blueprint86.yml", Blueprint, "OK"),
    ("blueprint/blueprint87.yml", Blueprint, "OK"),
    ("blueprint/blueprint88.yml", Blueprint, "OK"),
    ("blueprint/blueprint89.yml", Blueprint, "OK"),
    ("blueprint/blueprint91.yml", Blueprint, "OK"),
    ("blueprint/blueprint92.yml", Blueprint, "OK"),
    ("blueprint/blueprint93.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint94.yml",
        Blueprint,
        "UnresolvedPortReferenceError",
    ),
    ("blueprint/blueprint96.yml", Blueprint, "OK"),
    ("blueprint/blueprint97.yml", Blueprint, "OK"),
    ("blueprint/blueprint98.yml", Blueprint, "OK"),
    (
        "blueprint/blueprint99.yml",
        Blueprint,
        "UnresolvedPortReferenceError",
    ),
    (
        "blueprint/blueprint101.yml",
        Blueprint,
        "UnresolvedEnvironmentVariableError",
    ),
    ("blueprint/blueprint102.yml", Blueprint, "OK"),
    ("gateway/gateway1.yml", Gateway, "OK"),
    ("gateway/gateway2.yml", Gateway, "OK"),
    (
        "gateway/gateway3.yml",
        Gateway,
        "UnsupportedGatewayNameError",
    ),
    ("gateway/gateway4.yml", Gateway, "StickyPortTypeError"),
    ("gateway/gateway6.yml", Gateway, "OK"),
    ("gateway/gateway7.yml", Gateway, "OK"),
    ("gateway/gateway8.yml", Gateway, "OK"),
    ("gateway/gateway9.yml", Gateway, "OK"),
    (
        "gateway/gateway11.yml",
        Gateway,
        "IllegalGatewayVirtualHosts",
    ),
    ("gateway/gateway12.yml", Gateway, "OK"),
    ("gateway/gateway13.yml", Gateway, "OK"),
    ("gateway/gateway14.yml", Gateway, "OK"),
    ("gateway/gateway16.yml", Gateway, "GatewayRouteWeightError"),
    ("gateway/gateway17.yml", Gateway, "OK"),
    ("gateway/gateway18.yml", Gateway, "OK"),
    ("gateway/gateway19.yml", Gateway, "OK"),
    ("gateway/gateway21.yml", Gateway, "InvalidSelectorError"),
    ("gateway/gateway22.yml", Gateway, "OK"),
    ("gateway/gateway23.yml", Gateway, "OK"),
    ("gateway/gateway24.yml", Gateway, "InvalidSelectorError"),
    (
        "gateway/gateway26.yml",
        Gateway,
        "RouteSelectorExternalTargetError",
    ),
    ("gateway/gateway27.yml", Gateway, "InvalidSelectorError"),
    ("sla/sla1.yml", Sla, "OK"),
    ("sla/sla2.yml", Sla, "OK"),
    ("sla/sla3.yml", Sla, "OK"),
    ("sla/sla4.yml", Sla, "OK"),
    ("sla/sla6.yml", Sla, "OK"),
    ("workflow/workflow1.yml", Workflow, "OK"),
    ("workflow/workflow2.yml", Workflow, "OK"),
    ("workflow/workflow3.yml", Workflow, "OK"),
    ("workflow/workflow4.yml", Workflow, "OK"),
    ("workflow/workflow6.yml", Workflow, "OK"),
    ("workflow/workflow7.yml", Workflow, "OK"),
    ("workflow/workflow8.yml", Workflow, "OK"),
    ("workflow/workflow9.yml", Workflow, "OK"),
    ("workflow/workflow11.yml", Workflow, "OK"),
    ("workflow/workflow12.yml", Workflow, "OK"),
    ("workflow/workflow13.yml", Workflow, "OK"),
    (
        "workflow/workflow14.yml",
        Workflow,
        "UndefinedWorkflowScheduleError",
    ),
    ("workflow/workflow16.yml", Workflow, "OK"),
    ("workflow/workflow17.yml", Workflow, "OK"),
    ("workflow/workflow18.yml", Workflow, "OK"),
    ("workflow/workflow19.yml", Workflow, "OK"),
    ("workflow/workflow21.yml", Workflow, "OK"),
    (
        "workflow/workflow22.yml",
        Workflow,
        "MissingEnvironmentVariableError",
    ),
    (
        "workflow/workflow23.yml",
        Workflow,
        "UnresolvedDependencyInTraitValueError",
    ),
    ("workflow/workflow24.yml", Workflow, "OK"),
    ("workflow/workflow26.yml", Workflow, "OK"),
    ("workflow/workflow27.yml", Workflow, "OK"),
    ("workflow/workflow28.yml", Workflow, "OK"),
    ("workflow/workflow29.yml", Workflow, "OK"),
    ("event/event1.yml", Event, "OK"),
    ("event/event2.yml", Event, "OK"),
    ("event/event3.yml", Event, "MissingPathValueError"),
    ("event/event4.yml", Event, "NoTagEventError"),
    ("event/event5.yml", Event, "EventTimestampError"),
    ("event/event6.yml", Event, "OK"),
    ("event/event7.yml", Event, "EventTypeError"),
    ("event/query1.yml", EventQuery, "OK"),
    ("event/query2.yml", EventQuery, "OK"),
    ("event/query3.yml", EventQuery, "EventQueryTimeError"),
    ("event/query4.yml", EventQuery, "UnsupportedAggregatorError"),
    ("event/query5.yml", EventQuery, "OK"),
    ("template/template1.yml", Template, "OK"),
    ("template/template2.yml", Template, "OK"),
    ("template/template3.yml", Template, "ImportDefinitionError"),
    ("template/template4.yml", Template, "OK"),
    ("template/template5.yml", Template, "EmptyImportError"),
    ("template/template6.yml", Template, "ImportDefinitionError"),
];

fn outcome(file: &str, kind: ArtifactKind) -> Result<(), String> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    let mut docs = load_documents(&text).map_err(|e| e.code().to_owned())?;
    assert_eq!(docs.len(), 1, "{file}: one document");
    let doc = docs.remove(0);
    if kind == Template {
        return read_import(doc)
            .map(|_| ())
            .map_err(|e| e.code().to_owned());
    }
    read_node(doc, Some(kind))
        .map(|_| ())
        .map_err(|e| e.code().to_owned())
}

#[test]
fn every_fixture_has_the_tabled_outcome() {
    let mut failures = Vec::new();
    for (file, kind, expected) in TABLE {
        let got = match outcome(file, *kind) {
            Ok(()) => "OK".to_owned(),
            Err(code) => code,
        };
        if got != *expected {
            failures.push(format!("{file}: expected {expected}, got {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_covers_every_fixture_file() {
    let mut missing = Vec::new();
    for dir in [
        "breed",
        "blueprint",
        "gateway",
        "sla",
        "workflow",
        "event",
        "template",
    ] {
        for entry in std::fs::read_dir(format!("{FIXTURES}/{dir}")).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            if !TABLE.iter().any(|(f, _, _)| *f == name) {
                missing.push(name);
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "fixtures without a row: {missing:?}");
}

// reader-fixtures.md §1 YamlReaderSpec.
#[test]
fn invalid1_custom_tag_is_a_yaml_parsing_error() {
    let text = std::fs::read_to_string(format!("{FIXTURES}/invalid1.yml")).unwrap();
    let err = load_documents(&text).unwrap_err();
    assert_eq!(err.code(), "YamlParsingError");
    assert!(
        err.to_string()
            .contains("Can't construct a resource for !ios"),
        "{err}"
    );
}

/// Round trip: for every valid fixture, read → write YAML → read and read → write JSON → read
/// give equal artifacts, and writing is stable (the second write equals the first).
#[test]
fn every_valid_fixture_round_trips_through_yaml_and_json() {
    use vamp_core::dsl::{read_str, to_json, to_yaml};
    let mut checked = 0;
    for (file, kind, expected) in TABLE {
        if *expected != "OK" || *kind == Template {
            continue;
        }
        let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
        let original = read_node(load_documents(&text).unwrap().remove(0), Some(*kind)).unwrap();
        let yaml = to_yaml(&original);
        let from_yaml = read_str(&yaml, None).unwrap_or_else(|e| panic!("{file}: {e}\n{yaml}"));
        assert_eq!(
            from_yaml,
            vec![original.clone()],
            "{file} via YAML:\n{yaml}"
        );
        assert_eq!(
            to_yaml(&from_yaml[0]),
            yaml,
            "{file}: YAML output is stable"
        );
        let json = to_json(&original);
        let from_json = read_str(&json, None).unwrap_or_else(|e| panic!("{file}: {e}\n{json}"));
        assert_eq!(from_json, vec![original], "{file} via JSON:\n{json}");
        checked += 1;
    }
    assert!(checked > 100, "only {checked} fixtures round-tripped");
}

// reader-fixtures.md §1: invalid2 read as Int, invalid3 through a scalar.
#[test]
fn invalid2_string_where_int_expected() {
    use vamp_core::dsl::lookup_int;
    use vamp_core::error::Notification;
    let text = std::fs::read_to_string(format!("{FIXTURES}/invalid2.yml")).unwrap();
    let doc = load_documents(&text).unwrap().remove(0);
    let err = lookup_int(&doc, "integer").unwrap_err();
    assert_eq!(
        *err.notification,
        Notification::UnexpectedTypeError {
            path: "integer".into(),
            expected: "Int".into(),
            actual: "String".into()
        }
    );
}

#[test]
fn invalid3_path_through_a_scalar() {
    use vamp_core::dsl::lookup_string;
    use vamp_core::error::Notification;
    let text = std::fs::read_to_string(format!("{FIXTURES}/invalid3.yml")).unwrap();
    let doc = load_documents(&text).unwrap().remove(0);
    let err = lookup_string(&doc, "root/nested/next").unwrap_err();
    assert_eq!(
        *err.notification,
        Notification::UnexpectedInnerElementError {
            path: "nested".into(),
            found: "String".into()
        }
    );
    assert_eq!(
        lookup_string(&doc, "root/nested").unwrap().as_deref(),
        Some("value")
    );
}
