"""AWS access shared by the ALB balancer and the CloudWatch source: boto3 in worker threads.

Speaks to AWS through boto3 with the *standard credential chain* only (environment,
``AWS_PROFILE`` / shared files, SSO, web identity, container and instance roles). immunity's
config never holds access keys; it may name a ``role_arn`` to assume through STS on top of
the chain. Assumed-role credentials refresh themselves, so a deployment may outlive them.

Every client uses botocore's ``standard`` retry mode (transient errors, throttling and 5xx
are retried with capped exponential backoff) plus explicit connect/read timeouts. boto3 is
synchronous: each call runs in a worker thread (`anyio.to_thread.run_sync`), reads are
abandoned on cancellation (the caller owns the deadline), writes are waited for.

Every botocore/boto3 error leaves this module once, through `map_aws_error`, as the
caller's `AdapterError` subclass or as a `PreflightError`, with a hint saying what to fix.
Messages never carry credentials: they name the operation, the AWS error code and the
resource, never a key, a token or a signature.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import boto3
import botocore.session
from botocore import xform_name
from botocore.config import Config as BotoConfig
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from pydantic import BaseModel, ConfigDict, Field

from immunity.config.types import Duration
from immunity.errors import AdapterError, ImmunityError, PreflightError

log = logging.getLogger("immunity.clients.aws")

# IAM action prefix per boto3 service name, for "grant <action>" hints.
_IAM_PREFIX = {"elbv2": "elasticloadbalancing", "cloudwatch": "cloudwatch", "sts": "sts"}

_CREDENTIALS_HINT = (
    "set AWS_PROFILE (a profile in ~/.aws/config) or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY in the environment, or run where an instance/container role or web "
    "identity (OIDC) is available; immunity never reads keys from its own config"
)
_REJECTED_HINT = (
    "AWS rejected the credentials or they expired: refresh them (aws sso login, a new CI "
    "session) and check which identity the credential chain picks (aws sts get-caller-identity)"
)
_NETWORK_HINT = (
    "check network access to the AWS endpoint: region, endpoint_url (VPC endpoint), "
    "HTTPS_PROXY, security groups"
)
_THROTTLE_HINT = (
    "AWS kept throttling after every retry: raise poll_interval, raise max_attempts, or ask "
    "for a higher API rate limit"
)

_CODE_HINTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
            "ExpiredToken",
            "ExpiredTokenException",
            "InvalidAccessKeyId",
            "AuthFailure",
            "InvalidToken",
        ),
        _REJECTED_HINT,
    ),
    **dict.fromkeys(
        (
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "RequestThrottled",
        ),
        _THROTTLE_HINT,
    ),
}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}


class AwsAccess(BaseModel):
    """How to reach AWS; the shared part of every AWS adapter's settings. Holds no secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = None
    """AWS region; default: derived from the ARN where there is one, else AWS_REGION."""
    role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    """A role to assume through STS on top of the standard credential chain."""
    external_id: str | None = None
    """ExternalId for the AssumeRole call, when the role's trust policy requires one."""
    role_session_name: str = Field(default="immunity", pattern=r"^[\w+=,.@-]{2,64}$")
    """Shown in CloudTrail as the assumed-role session."""
    endpoint_url: str | None = None
    """Override the service endpoint (VPC endpoint, or moto in tests)."""
    sts_endpoint_url: str | None = None
    """Override the STS endpoint used for role_arn (default: the regional STS endpoint)."""
    max_attempts: int = Field(default=8, ge=1, le=20)
    """botocore standard-mode attempts per call (first try included)."""
    connect_timeout: Duration = 5.0
    """Seconds to open a connection to the AWS API."""
    read_timeout: Duration = 20.0
    """Seconds to wait for an AWS API reply."""


def region_from_arn(arn: str) -> str | None:
    """The region field of an ARN (``arn:aws:service:REGION:account:...``), if any."""
    parts = arn.split(":")
    if len(parts) > 5 and parts[0] == "arn":
        return parts[3] or None
    return None


def _error_code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    code = err.get("Code")
    if code:
        return str(code)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return f"HTTP{status}" if status else "ClientError"


def _client_detail(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    message = str(err.get("Message") or "").strip()
    # moto and proxies may answer with an HTML page; keep the message one readable line
    if message.startswith("<") or len(message) > 300:
        message = re.sub(r"<[^>]+>", " ", message)
        message = " ".join(message.split())[:300]
    return message


def map_aws_error(
    exc: BaseException,
    *,
    adapter: str,
    service: str,
    operation: str,
    error_cls: type[AdapterError],
    host: str | None = None,
    resource: str | None = None,
    preflight: bool = False,
    code_hints: Mapping[str, str] | None = None,
) -> ImmunityError:
    """The one place a boto3/botocore error becomes immunity's: returns it, the caller raises it.

    `operation` is the AWS API name (``DescribeTargetHealth``); `code_hints` lets an adapter
    name the setting to fix for its own error codes (``TargetGroupNotFound`` -> target_group_arn).
    """
    code: str
    detail: str
    hint: str | None
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        code, detail, hint = "NoCredentials", "no AWS credentials found", _CREDENTIALS_HINT
    elif isinstance(exc, CredentialRetrievalError):
        code, detail, hint = (
            "CredentialRetrieval",
            "could not retrieve AWS credentials",
            (_CREDENTIALS_HINT),
        )
    elif isinstance(exc, ProfileNotFound):
        code, detail = "ProfileNotFound", "the AWS profile named by AWS_PROFILE does not exist"
        hint = "fix AWS_PROFILE or add the profile to ~/.aws/config"
    elif isinstance(exc, NoRegionError):
        code, detail = "NoRegion", "no AWS region configured"
        hint = "set region: in the config, or AWS_REGION in the environment"
    elif isinstance(exc, BotoConnectionError | HTTPClientError):
        code, detail, hint = type(exc).__name__, str(exc), _NETWORK_HINT
    elif isinstance(exc, ClientError):
        code, detail = _error_code(exc), _client_detail(exc)
        if code in _DENIED:
            action = f"{_IAM_PREFIX.get(service, service)}:{operation}"
            hint = f"grant {action} to the identity immunity runs as"
            if resource:
                hint += f" on {resource}"
        else:
            hint = (code_hints or {}).get(code) or _CODE_HINTS.get(code)
    elif isinstance(exc, BotoCoreError):
        code, detail, hint = type(exc).__name__, str(exc), None
    else:
        code, detail, hint = type(exc).__name__, str(exc), None
    where = f" for {host}" if host else ""
    message = f"{adapter}: {operation}{where} failed: {code}" + (f": {detail}" if detail else "")
    context: dict[str, Any] = {"aws_error": code, "operation": operation}
    if resource:
        context["resource"] = resource
    if preflight:
        context["adapter"] = adapter
        if host:
            context["host"] = host
        return PreflightError(message, hint=hint, context=context)
    return error_cls(message, adapter=adapter, host=host, hint=hint, context=context)


class AwsApi:
    """One adapter's boto3 session and clients, with every call mapped into immunity's errors.

    Clients are built lazily in a worker thread on first use (building one loads service
    models and may touch the credential chain). `clients` injects pre-built clients by
    service name: the seam for tests that replay recorded replies.
    """

    def __init__(
        self,
        settings: AwsAccess,
        *,
        adapter: str,
        error_cls: type[AdapterError],
        region: str | None = None,
        code_hints: Mapping[str, str] | None = None,
        clients: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._adapter = adapter
        self._error_cls = error_cls
        self._region = settings.region or region
        self._code_hints = dict(code_hints or {})
        self._clients: dict[str, Any] = dict(clients or {})
        self._injected = bool(clients)
        self._session: boto3.session.Session | None = None
        self._lock = anyio.Lock()
        self._config = BotoConfig(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            user_agent_extra="immunity",
        )
        # Until a service's endpoint has answered once, a connection that cannot be made at
        # all (refused, no such host) is a wrong endpoint_url or region or no network, not a
        # blip: it is named at once instead of retried max_attempts times with backoff (tens
        # of seconds, and `status`'s shorter wait hid the cause). Such a first call goes out
        # without retries; any other error on it is retried as usual.
        self._first_config = self._config.merge(BotoConfig(retries={"max_attempts": 1}))
        self._first: dict[str, Any] = {}
        self._answered: set[str] = set()

    # -- building (sync, runs in a worker thread) --------------------------------------

    def _build_session(self) -> boto3.session.Session:
        base = boto3.session.Session(region_name=self._region)
        s = self._settings
        if not s.role_arn:
            return base
        source = base.get_credentials()
        if source is None:
            raise NoCredentialsError()
        extra: dict[str, Any] = {"RoleSessionName": s.role_session_name}
        if s.external_id:
            extra["ExternalId"] = s.external_id

        def sts_client(service: str, **kw: Any) -> Any:
            return base.client(  # type: ignore[call-overload]
                service,
                region_name=base.region_name,
                endpoint_url=s.sts_endpoint_url,
                config=self._config,
                **kw,
            )

        fetcher = AssumeRoleCredentialFetcher(
            client_creator=sts_client,
            source_credentials=source,
            role_arn=s.role_arn,
            extra_args=extra,
        )
        creds = DeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method="assume-role"
        )
        core = botocore.session.Session()
        # botocore has no public setter for refreshable credentials on a session; this is the
        # long-standing way to hand it assumed-role credentials that renew before expiry.
        core._credentials = creds  # type: ignore[attr-defined]
        return boto3.session.Session(botocore_session=core, region_name=base.region_name)

    def _build_client(self, service: str, *, first: bool = False) -> Any:
        if self._session is None:
            self._session = self._build_session()
        return self._session.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self._settings.endpoint_url,
            config=self._first_config if first else self._config,
        )

    def _resolve_credentials(self) -> None:
        if self._session is None:
            self._session = self._build_session()
        creds = self._session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        # forces the assume-role call (if any) so a bad role_arn shows up here
        creds.get_frozen_credentials()

    # -- async surface -------------------------------------------------------------------

    async def client(self, service: str, *, preflight: bool = False) -> Any:
        """The boto3 client for `service`, built once."""
        if service in self._clients:
            return self._clients[service]
        async with self._lock:
            if service not in self._clients:
                try:
                    self._clients[service] = await anyio.to_thread.run_sync(
                        self._build_client, service
                    )
                except (BotoCoreError, ClientError) as exc:
                    raise self._map(exc, service, "CreateClient", None, None, preflight) from exc
        return self._clients[service]

    async def check_credentials(self) -> None:
        """Raise `PreflightError` with a hint unless the credential chain (and role) resolve."""
        if self._injected:  # injected clients bring their own credentials
            return
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._resolve_credentials, abandon_on_cancel=True)
            except (BotoCoreError, ClientError) as exc:
                role = self._settings.role_arn
                operation = "AssumeRole" if role else "ResolveCredentials"
                raise self._map(exc, "sts", operation, None, role, True) from exc

    async def call(
        self,
        service: str,
        operation: str,
        *,
        host: str | None = None,
        resource: str | None = None,
        preflight: bool = False,
        write: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Call AWS API `operation` (``DescribeTargetHealth``) of `service` in a worker thread.

        Reads are abandoned on cancellation (the answer no longer matters); writes are waited
        for, so a cancelled caller never leaves a register/deregister in doubt in this process.
        """
        if service not in self._answered and not self._injected and not write:
            first = await self._first_call(service, operation, host, resource, preflight, params)
            if first is not None:
                return first
        client = await self.client(service, preflight=preflight)
        method = getattr(client, xform_name(operation))
        log.debug("%s: %s %s", self._adapter, operation, host or resource or "")
        try:
            reply = await anyio.to_thread.run_sync(
                functools.partial(method, **params), abandon_on_cancel=not write
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._map(exc, service, operation, host, resource, preflight) from exc
        self._answered.add(service)
        return dict(reply)

    async def _first_call(
        self,
        service: str,
        operation: str,
        host: str | None,
        resource: str | None,
        preflight: bool,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """`operation` once, without retries, before `service` ever answered: its reply;
        the mapped error at once when the endpoint cannot be reached at all; None for any
        other error (the caller makes the call again, retried as usual)."""
        async with self._lock:
            if service not in self._first:
                try:
                    self._first[service] = await anyio.to_thread.run_sync(
                        functools.partial(self._build_client, service, first=True)
                    )
                except (BotoCoreError, ClientError) as exc:
                    raise self._map(exc, service, "CreateClient", None, None, preflight) from exc
        method = getattr(self._first[service], xform_name(operation))
        try:
            reply = await anyio.to_thread.run_sync(
                functools.partial(method, **params), abandon_on_cancel=True
            )
        except (EndpointConnectionError, ConnectTimeoutError) as exc:  # never connected
            raise self._map(exc, service, operation, host, resource, preflight) from exc
        except (BotoCoreError, ClientError):
            return None
        self._answered.add(service)
        return dict(reply)

    def _map(
        self,
        exc: BaseException,
        service: str,
        operation: str,
        host: str | None,
        resource: str | None,
        preflight: bool,
    ) -> ImmunityError:
        return map_aws_error(
            exc,
            adapter=self._adapter,
            service=service,
            operation=operation,
            error_cls=self._error_cls,
            host=host,
            resource=resource,
            preflight=preflight,
            code_hints=self._code_hints,
        )

    async def aclose(self) -> None:
        """Close the HTTP connection pools of the clients built here. Idempotent."""
        clients, self._clients = self._clients, {}
        first, self._first = self._first, {}
        for c in [*clients.values(), *first.values()]:
            close = getattr(c, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)
