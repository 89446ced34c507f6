# Can this host read the package of a release? (preflight: "unknown package" before any drain)
param(
    [Parameter(Mandatory = $true)][string]$PackageSource
)
#include _common.ps1

try {
    if ($PackageSource -match '^https?://') {
        Invoke-WebRequest -Uri $PackageSource -Method Head -UseBasicParsing | Out-Null
        $found = $true
    }
    else {
        $found = Test-Path -LiteralPath $PackageSource
    }
    Write-Result @{ found = $found; source = $PackageSource }
}
catch {
    Write-Failure $_.Exception.Message
}
