//! Validation errors of the DSL: one variant per Vamp notification.
//!
//! [`Notification::code`] returns Vamp's notification name exactly (`MissingPathValueError`,
//! `GatewayRouteWeightError`, ...), so tools and tests can match on the same names Vamp users
//! know. The messages follow Vamp's `messages.yml`, except where Vamp printed something useless
//! (`Error.` for missing port and constant values, `Some(8080)` for options): those say what is
//! wrong. [`ReadError`] adds where: the artifact and the path in the document.

use std::fmt;

use crate::model::{Argument, ArtifactKind, DefaultBreed, DefaultCondition, Gateway, Port};
use crate::node::Node;

/// Formats a breed as `name -> definition`, as Vamp's messages do.
fn breed_label(breed: &DefaultBreed) -> String {
    format!("{} -> {}", breed.name, breed.deployable.definition)
}

fn gateway_label(gateway: &Gateway) -> String {
    if gateway.name.is_empty() {
        format!(
            "gateway on port {}",
            gateway.port.value.as_deref().unwrap_or(&gateway.port.name)
        )
    } else {
        gateway.name.clone()
    }
}

/// A Vamp notification: what is wrong with a document.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Notification {
    /// YAML syntax error or unsupported tag.
    #[error("Error: {message}")]
    YamlParsingError {
        /// The parser's message.
        message: String,
    },
    /// A required key is absent or null.
    #[error("Can't find any value for path: /{path}")]
    MissingPathValueError {
        /// The path, joined with `/`.
        path: String,
    },
    /// A value has the wrong type.
    #[error("Unexpected type for path '{path}': expected {expected}, found {actual}.")]
    UnexpectedTypeError {
        /// The path.
        path: String,
        /// The expected type.
        expected: String,
        /// The type found.
        actual: String,
    },
    /// A path goes through a non-map value.
    #[error("Can't find a nested element for path '{path}': found {found}.")]
    UnexpectedInnerElementError {
        /// The path up to the scalar.
        path: String,
        /// The type found there.
        found: String,
    },
    /// A reference-or-anonymous position holds a named definition.
    #[error(
        "Either it should be a reference '{name} -> {reference}' or an anonymous inline definition, but not both."
    )]
    EitherReferenceOrAnonymous {
        /// The kind word (`route`, `sla`, `scale`, `weakcondition`, ...).
        name: String,
        /// The given name.
        reference: String,
    },
    /// An anonymous-only position holds a named definition.
    #[error("Expected an anonymous artifact, not one with the name: '{name}'.")]
    NotAnonymousError {
        /// The given name.
        name: String,
    },
    /// Keys that no reader consumed.
    #[error("Unexpected in DSL: {message}")]
    UnexpectedElement {
        /// The tree of unconsumed entries.
        element: Node,
        /// Its JSON (or the offending value).
        message: String,
    },
    /// A name with whitespace, `/`, `[` or `]`, or empty.
    #[error(
        "Illegal name or reference - white space characters, '/', '[' and ']' are not allowed: {name}"
    )]
    IllegalName {
        /// The name.
        name: String,
    },
    /// A port or constant name that also contains `.`.
    #[error("Illegal name - white space characters, '.', '/', '[' and ']' are not allowed: {name}")]
    IllegalStrictName {
        /// The name.
        name: String,
    },
    /// A body's name differs from the name it is stored under.
    #[error("Inconsistent name: given '{given}' but found '{found}'.")]
    InconsistentArtifactName {
        /// The expected name.
        given: String,
        /// The name in the document.
        found: String,
    },
    /// A document's `kind` differs from the reader's kind.
    #[error("Inconsistent kind: given '{given}' but found '{found}'.")]
    InconsistentArtifactKind {
        /// The kind in the document.
        given: String,
        /// The reader's kind.
        found: String,
    },
    /// `metadata` is not a map.
    #[error("Unsupported metadata - metadata must be a map.")]
    UnsupportedMetadata,
    /// A value interpolation string cannot be parsed.
    #[error("Cannot parse: {reason}.")]
    ParserError {
        /// Why.
        reason: String,
    },
    /// A port, environment variable or constant value is a map or a list.
    #[error("Malformed entry for port, environment variable or constant '{name}'.")]
    MalformedTraitError {
        /// The trait's name.
        name: String,
    },
    /// A breed port without a value.
    #[error("Missing port value for '{}' and breed '{}'.", port.name, breed_label(breed))]
    MissingPortValueError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// The port.
        port: Port,
    },
    /// A breed constant without a value.
    #[error(
        "Missing constant value for '{constant}' and breed '{}'.",
        breed_label(breed)
    )]
    MissingConstantValueError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// The constant's name.
        constant: String,
    },
    /// A cycle in the inline dependency graph.
    #[error("Recursive (cyclic) dependency detected for breed '{}'.", breed.name)]
    RecursiveDependenciesError {
        /// The breed whose dependency closes the cycle.
        breed: Box<DefaultBreed>,
    },
    /// A trait value references an undeclared dependency or a missing trait.
    #[error(
        "Unresolved reference '{reference}' in breed '{}'. Check if breed dependency is declared.",
        breed_label(breed)
    )]
    UnresolvedDependencyInTraitValueError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// The reference (`db.ports.web`, `db.host`, or a variable name).
        reference: String,
    },
    /// An argument that is not a single `key: value` with a primitive value.
    #[error("Invalid argument - argument must be in form of 'key: value'.")]
    InvalidArgumentError,
    /// `privileged` with a non-boolean value.
    #[error("Argument {} has an invalid value: {}.", argument.key, argument.value)]
    InvalidArgumentValueError {
        /// The argument.
        argument: Argument,
    },
    /// (Deploy time) a dependency matches no service.
    #[error("Unresolved dependency '{dependency}' for breed '{}'.", breed.name)]
    UnresolvedDependencyError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// The dependency's name.
        dependency: String,
    },
    /// A blueprint gateway route that is not `cluster/port` of an existing cluster port.
    #[error(
        "Gateway port '{name} -> {value}' cannot be resolved. Check if referenced cluster exists and if it has any breed with referenced port name."
    )]
    UnresolvedGatewayPortError {
        /// The route or `cluster.port`.
        name: String,
        /// The gateway port value.
        value: String,
    },
    /// A blueprint environment variable or interpolation that cannot be resolved.
    #[error(
        "Parameter '{name} -> {value}' cannot be resolved. Check if cluster exists and if it has any breed with port, environment variable or constant referable by {name}."
    )]
    UnresolvedEnvironmentVariableError {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
    },
    /// The same breed used by two services of a blueprint.
    #[error("Multiple references for breed: '{name}'.")]
    NonUniqueBlueprintBreedReferenceError {
        /// The breed's name.
        name: String,
    },
    /// An inline breed dependency that is not among the blueprint's breeds.
    #[error(
        "Unresolved breed dependency for breed '{}' and dependency '{} -> {}'.",
        breed.name, dependency.0, dependency.1
    )]
    UnresolvedBreedDependencyError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// (alias, dependency breed name).
        dependency: (String, String),
    },
    /// Cluster gateway weights above 100 in total.
    #[error(
        "Total route weight cannot exceed 100 or be a negative value. Check cluster: '{cluster}'."
    )]
    RouteWeightError {
        /// The cluster's name.
        cluster: String,
    },
    /// Cluster gateway condition strength outside 0..100.
    #[error(
        "Route filter strength cannot exceed 100 or be a negative value. Check cluster: '{cluster}'."
    )]
    RouteConditionStrengthError {
        /// The cluster's name.
        cluster: String,
    },
    /// A scale escalation target that is not a cluster of the blueprint.
    #[error("Unresolved scale escalation target cluster '{target}' for cluster '{cluster}'.")]
    UnresolvedScaleEscalationTargetCluster {
        /// The cluster with the SLA.
        cluster: String,
        /// The target.
        target: String,
    },
    /// A blueprint without services.
    #[error("Expected at least one service.")]
    NoServiceError,
    /// A service or workflow environment variable without a value.
    #[error("Missing environment variable value for '{name}' in service '{}'.", breed.name)]
    MissingEnvironmentVariableError {
        /// The breed.
        breed: Box<DefaultBreed>,
        /// The variable's name.
        name: String,
    },
    /// `sticky` other than `route`, `instance`, `none` or null.
    #[error("Illegal routing sticky value: '{sticky}'.")]
    IllegalGatewayStickyValue {
        /// The value.
        sticky: String,
    },
    /// `virtual_hosts` with a non-string entry.
    #[error("Illegal gateway virtual hosts - only list of strings is supported.")]
    IllegalGatewayVirtualHosts,
    /// A cluster gateway route that names no service of the cluster.
    #[error("Unresolved service route for '{cluster}' and '{service}'.")]
    UnresolvedServiceRouteError {
        /// The cluster.
        cluster: String,
        /// The route key.
        service: String,
    },
    /// A gateway name with whitespace or brackets, or not 1..4 segments.
    #[error(
        "Unsupported gateway name: '{name}'. Must be either in format '$gateway', '$deployment/$port' or '$deployment/$cluster/$port'."
    )]
    UnsupportedGatewayNameError {
        /// The name.
        name: String,
    },
    /// A route path that is not 1..4 segments.
    #[error(
        "Unsupported route path: '{path}'. Must be one of: '$gateway', '$deployment/$port' or '$deployment/$cluster/$port'."
    )]
    UnsupportedRoutePathError {
        /// The path.
        path: String,
    },
    /// Sticky sessions on a TCP port.
    #[error("Sticky sessions are not allowed for TCP port: '{}'.", port.name)]
    StickyPortTypeError {
        /// The port.
        port: Port,
    },
    /// A condition on a TCP port.
    #[error(
        "HTTP conditions are not allowed for TCP port: '{}' and condition '{}'.",
        port.name, condition.definition
    )]
    ConditionPortTypeError {
        /// The port.
        port: Port,
        /// The condition.
        condition: DefaultCondition,
    },
    /// An anonymous cluster gateway whose inline breed has several ports.
    #[error(
        "Illegal anonymous routing port mapping - more than 1 port defined for '{}'.",
        breed.name
    )]
    IllegalAnonymousRoutingPortMappingError {
        /// The breed.
        breed: Box<DefaultBreed>,
    },
    /// Gateway weights that sum to neither 0% nor 100%.
    #[error(
        "Total route weight must be either 0% or 100%: {}.",
        gateway_label(gateway)
    )]
    GatewayRouteWeightError {
        /// The gateway.
        gateway: Box<Gateway>,
    },
    /// Gateway condition strength outside 0..100%.
    #[error(
        "Route filter strength cannot be less than 0% or greater than 100%: {}.",
        gateway_label(gateway)
    )]
    GatewayRouteConditionStrengthError {
        /// The gateway.
        gateway: Box<Gateway>,
    },
    /// Two blueprint gateways on the same port number, or two gateways of a cluster on the
    /// same breed port.
    #[error("Duplicate gateway port: '{port}'.")]
    DuplicateGatewayPortError {
        /// The port number (blueprint gateways) or breed port name (cluster gateways).
        port: String,
    },
    /// A rewrite not of the form `X if Y`.
    #[error("Unsupported path rewrite: {definition}.")]
    UnsupportedPathRewriteError {
        /// The rewrite as written.
        definition: String,
    },
    /// A health check port that no breed declares.
    #[error("Unresolved port reference: {port_reference}.")]
    UnresolvedPortReferenceError {
        /// The port name.
        port_reference: String,
    },
    /// A health check with negative failures.
    #[error("Failures can not be negative: {number}.")]
    NegativeFailuresNumberError {
        /// The number.
        number: i64,
    },
    /// A docker-compose port protocol other than tcp/http.
    #[error("Unsupported protocol: {protocol}")]
    UnsupportedProtocolError {
        /// The protocol.
        protocol: String,
    },
    /// A gateway port outside 0..65535.
    #[error("Invalid gateway port: {port}.")]
    InvalidGatewayPortError {
        /// The port number.
        port: i64,
    },
    /// An unparsable selector, or one with an invalid regular expression.
    #[error("Invalid selector: '{definition}'.")]
    InvalidSelectorError {
        /// The selector.
        definition: String,
    },
    /// A route selector on a multi-segment route.
    #[error("If route selector is defined, route path must not contain '/'.")]
    RouteSelectorOnlyRouteError,
    /// A route selector on an external route.
    #[error("Route selector cannot be defined for an external target.")]
    RouteSelectorExternalTargetError,
    /// A deployment service intention that Vamp does not know.
    #[error("Undefined state intention: {name}.")]
    UndefinedStateIntentionError {
        /// The intention.
        name: String,
    },
    /// A deployment service phase that Vamp does not know.
    #[error("Undefined state step: {name}.")]
    UndefinedStateStepError {
        /// The phase.
        name: String,
    },
    /// A workflow schedule other than daemon, event or time.
    #[error("Undefined workflow schedule - only daemon, event and time schedules are supported.")]
    UndefinedWorkflowScheduleError,
    /// An invalid ISO-8601 period.
    #[error("Illegal workflow schedule period: {period}.")]
    IllegalWorkflowSchedulePeriod {
        /// The period.
        period: String,
    },
    /// An unknown workflow status.
    #[error("Illegal workflow status: {status}.")]
    IllegalWorkflowStatus {
        /// The status.
        status: String,
    },
    /// An event without tags.
    #[error("Publishing an event without tags is not allowed.")]
    NoTagEventError,
    /// An event timestamp that is not an ISO-8601 offset date-time.
    #[error("Event timestamp cannot be parsed: '{timestamp}'.")]
    EventTimestampError {
        /// The timestamp.
        timestamp: String,
    },
    /// An event query with both `lt` and `lte`, or both `gt` and `gte`.
    #[error(
        "Event query time range is not valid, both 'lt' and 'lte' or 'gt' and 'gte' are not allowed."
    )]
    EventQueryTimeError,
    /// An aggregator other than min, max, average, sum or count.
    #[error("Unsupported aggregator: {aggregator}.")]
    UnsupportedAggregatorError {
        /// The aggregator.
        aggregator: String,
    },
    /// A canary policy that cannot work (an extension of Vamp's notifications).
    #[error("Invalid canary policy: {message}")]
    InvalidCanaryPolicyError {
        /// What is wrong.
        message: String,
    },
    /// An event type with characters other than alphanumerics, `-` and `_`.
    #[error("Unsupported event type '{event_type}', only alphanumerics, '-' and '_' are allowed.")]
    EventTypeError {
        /// The type.
        event_type: String,
    },
    /// `import: ""`.
    #[error("Empty import error.")]
    EmptyImportError,
    /// An import entry that is not a string reference.
    #[error("Import definition error - it must be a reference to an artifact.")]
    ImportDefinitionError,
    /// An imported artifact that does not exist.
    #[error("Reference '{reference}' cannot be resolved.")]
    ImportReferenceError {
        /// `kind/name`.
        reference: String,
    },
    /// An unknown kind.
    #[error("Unexpected resource: '{artifact}'.")]
    UnexpectedArtifact {
        /// The kind as given.
        artifact: String,
    },
}

impl Notification {
    /// Vamp's notification name, exactly (`MissingPathValueError`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::YamlParsingError { .. } => "YamlParsingError",
            Self::MissingPathValueError { .. } => "MissingPathValueError",
            Self::UnexpectedTypeError { .. } => "UnexpectedTypeError",
            Self::UnexpectedInnerElementError { .. } => "UnexpectedInnerElementError",
            Self::EitherReferenceOrAnonymous { .. } => "EitherReferenceOrAnonymous",
            Self::NotAnonymousError { .. } => "NotAnonymousError",
            Self::UnexpectedElement { .. } => "UnexpectedElement",
            Self::IllegalName { .. } => "IllegalName",
            Self::IllegalStrictName { .. } => "IllegalStrictName",
            Self::InconsistentArtifactName { .. } => "InconsistentArtifactName",
            Self::InconsistentArtifactKind { .. } => "InconsistentArtifactKind",
            Self::UnsupportedMetadata => "UnsupportedMetadata",
            Self::ParserError { .. } => "ParserError",
            Self::MalformedTraitError { .. } => "MalformedTraitError",
            Self::MissingPortValueError { .. } => "MissingPortValueError",
            Self::MissingConstantValueError { .. } => "MissingConstantValueError",
            Self::RecursiveDependenciesError { .. } => "RecursiveDependenciesError",
            Self::UnresolvedDependencyInTraitValueError { .. } => {
                "UnresolvedDependencyInTraitValueError"
            }
            Self::InvalidArgumentError => "InvalidArgumentError",
            Self::InvalidArgumentValueError { .. } => "InvalidArgumentValueError",
            Self::UnresolvedDependencyError { .. } => "UnresolvedDependencyError",
            Self::UnresolvedGatewayPortError { .. } => "UnresolvedGatewayPortError",
            Self::UnresolvedEnvironmentVariableError { .. } => "UnresolvedEnvironmentVariableError",
            Self::NonUniqueBlueprintBreedReferenceError { .. } => {
                "NonUniqueBlueprintBreedReferenceError"
            }
            Self::UnresolvedBreedDependencyError { .. } => "UnresolvedBreedDependencyError",
            Self::RouteWeightError { .. } => "RouteWeightError",
            Self::RouteConditionStrengthError { .. } => "RouteConditionStrengthError",
            Self::UnresolvedScaleEscalationTargetCluster { .. } => {
                "UnresolvedScaleEscalationTargetCluster"
            }
            Self::NoServiceError => "NoServiceError",
            Self::MissingEnvironmentVariableError { .. } => "MissingEnvironmentVariableError",
            Self::IllegalGatewayStickyValue { .. } => "IllegalGatewayStickyValue",
            Self::IllegalGatewayVirtualHosts => "IllegalGatewayVirtualHosts",
            Self::UnresolvedServiceRouteError { .. } => "UnresolvedServiceRouteError",
            Self::UnsupportedGatewayNameError { .. } => "UnsupportedGatewayNameError",
            Self::UnsupportedRoutePathError { .. } => "UnsupportedRoutePathError",
            Self::StickyPortTypeError { .. } => "StickyPortTypeError",
            Self::ConditionPortTypeError { .. } => "ConditionPortTypeError",
            Self::IllegalAnonymousRoutingPortMappingError { .. } => {
                "IllegalAnonymousRoutingPortMappingError"
            }
            Self::GatewayRouteWeightError { .. } => "GatewayRouteWeightError",
            Self::GatewayRouteConditionStrengthError { .. } => "GatewayRouteConditionStrengthError",
            Self::DuplicateGatewayPortError { .. } => "DuplicateGatewayPortError",
            Self::UnsupportedPathRewriteError { .. } => "UnsupportedPathRewriteError",
            Self::UnresolvedPortReferenceError { .. } => "UnresolvedPortReferenceError",
            Self::NegativeFailuresNumberError { .. } => "NegativeFailuresNumberError",
            Self::UnsupportedProtocolError { .. } => "UnsupportedProtocolError",
            Self::InvalidGatewayPortError { .. } => "InvalidGatewayPortError",
            Self::InvalidSelectorError { .. } => "InvalidSelectorError",
            Self::RouteSelectorOnlyRouteError => "RouteSelectorOnlyRouteError",
            Self::RouteSelectorExternalTargetError => "RouteSelectorExternalTargetError",
            Self::UndefinedStateIntentionError { .. } => "UndefinedStateIntentionError",
            Self::UndefinedStateStepError { .. } => "UndefinedStateStepError",
            Self::UndefinedWorkflowScheduleError => "UndefinedWorkflowScheduleError",
            Self::IllegalWorkflowSchedulePeriod { .. } => "IllegalWorkflowSchedulePeriod",
            Self::IllegalWorkflowStatus { .. } => "IllegalWorkflowStatus",
            Self::NoTagEventError => "NoTagEventError",
            Self::EventTimestampError { .. } => "EventTimestampError",
            Self::EventQueryTimeError => "EventQueryTimeError",
            Self::UnsupportedAggregatorError { .. } => "UnsupportedAggregatorError",
            Self::EventTypeError { .. } => "EventTypeError",
            Self::EmptyImportError => "EmptyImportError",
            Self::ImportDefinitionError => "ImportDefinitionError",
            Self::ImportReferenceError { .. } => "ImportReferenceError",
            Self::UnexpectedArtifact { .. } => "UnexpectedArtifact",
            Self::InvalidCanaryPolicyError { .. } => "InvalidCanaryPolicyError",
        }
    }
}

/// A DSL document that could not be read: the notification, the artifact and where in the
/// document.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    /// What is wrong.
    pub notification: Box<Notification>,
    /// The kind of artifact being read.
    pub kind: Option<ArtifactKind>,
    /// The artifact's name, when it was known.
    pub name: Option<String>,
    /// The path in the document (`clusters/sava/services/0/breed`), "" for the root.
    pub path: String,
}

impl ReadError {
    /// An error at `path` without artifact context (the reader adds it).
    pub fn new(notification: Notification, path: impl Into<String>) -> Self {
        Self {
            notification: Box::new(notification),
            kind: None,
            name: None,
            path: path.into(),
        }
    }

    /// Vamp's notification name (`MissingPathValueError`, ...).
    pub fn code(&self) -> &'static str {
        self.notification.code()
    }

    /// Adds the artifact's kind and name, unless already set by an inner reader.
    #[must_use]
    pub fn in_artifact(mut self, kind: ArtifactKind, name: Option<&str>) -> Self {
        if self.kind.is_none() {
            self.kind = Some(kind);
            self.name = name.filter(|n| !n.is_empty()).map(str::to_owned);
        }
        self
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, "{k} '{n}'")?,
            (Some(k), None) => write!(f, "{k}")?,
            _ => write!(f, "document")?,
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.notification)
        } else {
            write!(f, ", at '{}': {}", self.path, self.notification)
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.notification)
    }
}

/// The result of reading a document.
pub type ReadResult<T> = Result<T, ReadError>;

/// An error of the operations layer ([`crate::ops`]), named and worded as Vamp's operation
/// notifications (`messages.yml`); [`OperationError::code`] is Vamp's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperationError {
    /// A reference that cannot be expanded, or a deployment that does not exist.
    #[error("Artifact cannot be found: '{name}'.")]
    ArtifactNotFound {
        /// The kind (`breeds`, `scales`, `blueprints`, `deployments`, ...).
        kind: String,
        /// The name.
        name: String,
    },
    /// Two active services of a deployment with the same breed.
    #[error("Multiple references for breed: '{breed}'.")]
    NonUniqueBreedReferenceError {
        /// The breed's name.
        breed: String,
    },
    /// A breed variable without a value that neither the service nor the blueprint gives.
    #[error("Unresolved value of variable '{name}' for breed '{breed}'.")]
    UnresolvedVariableValueError {
        /// The breed's name.
        breed: String,
        /// The variable's name.
        name: String,
    },
    /// A blueprint variable that names no cluster, or a variable its breeds do not declare.
    #[error(
        "Parameter '{name} -> {value}' cannot be resolved. Check if cluster exists and if it has any breed with port, environment variable or constant referable by {name}."
    )]
    UnresolvedEnvironmentVariableError {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A breed dependency that matches no service of the deployment.
    #[error("Unresolved dependency '{dependency}' for breed '{breed}'.")]
    UnresolvedDependencyError {
        /// The breed's name.
        breed: String,
        /// The dependency.
        dependency: String,
    },
    /// Services that depend on each other in a circle.
    #[error("Recursive dependency detected for breed: '{breed}'.")]
    RecursiveDependenciesError {
        /// A breed on the circle.
        breed: String,
    },
    /// Route weights of a cluster gateway after a merge that total neither 0% nor 100%.
    #[error(
        "Total route weight for deployment '{deployment}' and cluster '{cluster}' must be either 100% or 0%, not {weight}%"
    )]
    UnsupportedRouteWeight {
        /// The deployment.
        deployment: String,
        /// The cluster.
        cluster: String,
        /// The total.
        weight: u32,
    },
    /// A slice that would leave a port's remaining routes not totalling 100%.
    #[error(
        "Invalid route weight in cluster '{deployment}/{cluster}' - after updating the services and routes, weight {weight}% is invalid for port: '{port}'."
    )]
    InvalidRouteWeight {
        /// The deployment.
        deployment: String,
        /// The cluster.
        cluster: String,
        /// The port's name.
        port: String,
        /// The total.
        weight: u32,
    },
    /// A gateway port already used by another gateway.
    #[error(
        "Gateway port '{port}' is/was in use by deployment: '{gateway}'. Remove '{gateway}' gateway first or use different port."
    )]
    UnavailableGatewayPortError {
        /// The port.
        port: String,
        /// The gateway using it.
        gateway: String,
    },
    /// The gateway port range is used up.
    #[error("No port available in the range [{begin}-{end}].")]
    NoAvailablePortError {
        /// The range's first port.
        begin: u16,
        /// The range's last port.
        end: u16,
    },
    /// A service stuck in a phase past the timeout.
    #[error("Deployment service error for deployment '{deployment}' and service '{service}'.")]
    DeploymentServiceError {
        /// The deployment.
        deployment: String,
        /// The service (breed name).
        service: String,
    },
    /// An internal (cluster) gateway created through the API.
    #[error(
        "Gateway is an internal deployment gateway - it can be created only when deployment cluster is created."
    )]
    InternalGatewayCreateError {
        /// The gateway.
        name: String,
    },
    /// An internal gateway whose routes would change through the API.
    #[error(
        "Gateway is an internal deployment gateway - routes can be added or removed only when cluster services are created or removed."
    )]
    InternalGatewayUpdateError {
        /// The gateway.
        name: String,
    },
    /// An internal gateway deleted while its deployment exists.
    #[error(
        "Gateway is an internal deployment gateway - it can be removed only when deployment cluster is removed."
    )]
    InternalGatewayRemoveError {
        /// The gateway.
        name: String,
    },
    /// A deployment named like a workflow.
    #[error("There cannot exist deployment and workflow with the same name: {name}.")]
    DeploymentWorkflowNameCollision {
        /// The name.
        name: String,
    },
}

impl OperationError {
    /// Vamp's notification name (`ArtifactNotFound`, `UnsupportedRouteWeight`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::ArtifactNotFound { .. } => "ArtifactNotFound",
            Self::NonUniqueBreedReferenceError { .. } => "NonUniqueBreedReferenceError",
            Self::UnresolvedVariableValueError { .. } => "UnresolvedVariableValueError",
            Self::UnresolvedEnvironmentVariableError { .. } => "UnresolvedEnvironmentVariableError",
            Self::UnresolvedDependencyError { .. } => "UnresolvedDependencyError",
            Self::RecursiveDependenciesError { .. } => "RecursiveDependenciesError",
            Self::UnsupportedRouteWeight { .. } => "UnsupportedRouteWeight",
            Self::InvalidRouteWeight { .. } => "InvalidRouteWeight",
            Self::UnavailableGatewayPortError { .. } => "UnavailableGatewayPortError",
            Self::NoAvailablePortError { .. } => "NoAvailablePortError",
            Self::DeploymentServiceError { .. } => "DeploymentServiceError",
            Self::DeploymentWorkflowNameCollision { .. } => "DeploymentWorkflowNameCollision",
            Self::InternalGatewayCreateError { .. } => "InternalGatewayCreateError",
            Self::InternalGatewayUpdateError { .. } => "InternalGatewayUpdateError",
            Self::InternalGatewayRemoveError { .. } => "InternalGatewayRemoveError",
        }
    }
}

/// A boxed error from a backend's own client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a backend (key-value store, persistence, scheduler, metrics).
///
/// Each backend keeps its own error type and converts it into one of these variants; the
/// original error stays reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key, artifact or service does not exist.
    #[error("{kind} '{name}' not found in {backend}")]
    NotFound {
        /// The backend's label.
        backend: String,
        /// What was looked for (`key`, `breeds`, `service`, ...).
        kind: String,
        /// Its name.
        name: String,
    },
    /// A create-only write found an existing entry.
    #[error("'{key}' already exists in {backend}")]
    AlreadyExists {
        /// The backend's label.
        backend: String,
        /// The key or `kind/name`.
        key: String,
    },
    /// A compare-and-swap write found another version.
    #[error("version conflict on '{key}' in {backend}: expected {expected}, found {}", found.map_or_else(|| "none".to_owned(), |v| v.to_string()))]
    Conflict {
        /// The backend's label.
        backend: String,
        /// The key or `kind/name`.
        key: String,
        /// The version the writer expected.
        expected: u64,
        /// The version found (`None`: the entry no longer exists).
        found: Option<u64>,
    },
    /// The scheduler service belongs to another control plane, or to none (it lacks the
    /// owner label): this one neither updates nor removes it
    /// ([`crate::layers::Owned`]).
    #[error("service '{service}' in {backend} belongs to {}, not to this control plane ({ours}): adopt or remove it as an unowned service", owner.as_deref().map_or_else(|| "no control plane (it has no io.vamp.owner label)".to_owned(), |o| format!("control plane {o}")))]
    NotOwned {
        /// The backend's label.
        backend: String,
        /// The service (`deployment/cluster/service`).
        service: String,
        /// Its owner (`None`: it has no owner label).
        owner: Option<String>,
        /// This control plane's identity.
        ours: String,
    },
    /// A leader's write refused because this replica no longer holds (or never held) the
    /// leader lease, or another replica took it over since ([`crate::layers::Fenced`]).
    #[error("write refused: {reason}")]
    Fenced {
        /// Why.
        reason: String,
    },
    /// The backend does not support the operation (see its capabilities).
    #[error("{operation} is not supported by {backend}")]
    NotSupported {
        /// The backend's label.
        backend: String,
        /// The operation.
        operation: &'static str,
    },
    /// The backend cannot be reached or timed out. Temporary: a retry may succeed.
    #[error("{backend} is unavailable")]
    Unavailable {
        /// The backend's label.
        backend: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A key, name or value the backend cannot store.
    #[error("invalid {what} '{value}': {reason}")]
    Invalid {
        /// What was invalid (`key`, `name`, `value`, ...).
        what: &'static str,
        /// The offending value (truncated for display).
        value: String,
        /// Why.
        reason: String,
    },
    /// A stored or given artifact is not valid DSL.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An operation Vamp refuses (merge, slice, scale, ...).
    #[error(transparent)]
    Operation(#[from] OperationError),
    /// A backend configuration that cannot work.
    #[error("invalid configuration for {backend}: {message}")]
    InvalidConfig {
        /// The backend's name.
        backend: String,
        /// What is wrong.
        message: String,
    },
    /// The backend is compiled out: enable its cargo feature.
    #[error("backend '{backend}' requires cargo feature '{feature}' of vamp-backends")]
    FeatureDisabled {
        /// The backend's name.
        backend: &'static str,
        /// The feature to enable.
        feature: &'static str,
    },
    /// Any other backend error.
    #[error("{backend} error")]
    Backend {
        /// The backend's label.
        backend: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// A watch could not deliver every change since its last event: the store no longer
    /// holds the changes in between (its history was compacted or trimmed, or an in-memory
    /// watcher fell too far behind). Not temporary. A watch opened with
    /// [`WatchOptions::initial`](crate::kv::WatchOptions) then yields the current entries and
    /// `Synced` again, so a consumer replaces its view; one opened without goes on from the
    /// store's current position.
    #[error("a watch on {backend} missed changes ({detail}); the current values are read again")]
    WatchGap {
        /// The backend's label.
        backend: String,
        /// What was lost, as far as the store can tell.
        detail: String,
    },
    /// A retry wrapper gave up; the last error is the source.
    #[error("gave up after {attempts} attempts")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Whether a retry may succeed (the backend was unavailable or timed out).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Whether a watch missed changes (see [`Error::WatchGap`]).
    pub fn is_gap(&self) -> bool {
        matches!(self, Self::WatchGap { .. })
    }

    /// Whether this is a version conflict or a create-only write that found an entry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::AlreadyExists { .. })
    }
}

/// The result of a backend operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
