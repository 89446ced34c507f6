# immunity deploy, as an Octopus "Run a Script" step (Bash, on a worker that reaches the fleet).
# Source of the step template's script body (integrations/octopus/immunity-deploy.json); the
# Octopus helpers get_octopusvariable and fail_step come from Calamari's bootstrap.
set -u
config=$(get_octopusvariable "Immunity.Config")
release=$(get_octopusvariable "Immunity.Release")
exe=$(get_octopusvariable "Immunity.Executable")
extra=$(get_octopusvariable "Immunity.ExtraArgs")
[ -n "$config" ] || fail_step "Immunity.Config is empty: the path of immunity.yaml on the worker"
[ -n "$release" ] || fail_step "Immunity.Release is empty: the release to roll out"
# --resume-unfinished: a guided-failure Retry of this step takes the interrupted deployment
# over from the journal instead of starting a new one.
# shellcheck disable=SC2086  # extra arguments are split on purpose
"${exe:-immunity}" deploy -c "$config" --release "$release" --ci octopus --resume-unfinished $extra
rc=$?
case $rc in
  0) ;;
  3) fail_step "immunity rejected $release and reverted the fleet (see the Immunity.VerdictReason output variable and the report artifact)" ;;
  4) fail_step "immunity could not finish the revert: a human is needed (see the report artifact)" ;;
  5) fail_step "another deployment holds the app's lease; retry when it has finished" ;;
  6) fail_step "the verdict stayed inconclusive and the rollout is held; Retry resumes it" ;;
  7) fail_step "not enough evidence to judge $release (thin traffic or a failing signal); the fleet was reverted" ;;
  *) fail_step "immunity exited $rc" ;;
esac
