# Shared helpers, pasted by immunity.hosts.iis in place of the `#include _common.ps1` line
# of each script (static code only: every value reaches the scripts as a bound parameter).
#
# Contract of every script: it writes exactly ONE line to the output stream, a compressed
# JSON object with "ok": true plus its result, or "ok": false and "error". Nothing else
# writes to the output stream (Out-Null everywhere), so Python parses the last line.

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
Set-StrictMode -Version 2.0

function Write-Result([hashtable]$Result) {
    $Result['ok'] = $true
    Write-Output (ConvertTo-Json -InputObject $Result -Compress -Depth 6)
}

function Write-Failure([string]$Message) {
    Write-Output (ConvertTo-Json -InputObject @{ ok = $false; error = $Message } -Compress)
}

function Assert-Name([string]$Value, [string]$What) {
    # Same rule as the Python side: the name becomes a site, app pool and folder name.
    if ($Value -notmatch '\A[A-Za-z0-9_.\-]+\z') {
        throw "$What '$Value' may only contain letters, digits, '_', '.' and '-'"
    }
}

function Get-ServerManager {
    try {
        Add-Type -AssemblyName 'Microsoft.Web.Administration, Version=7.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35'
    }
    catch {
        # not in the GAC: IIS still ships it beside inetmgr
        $dll = Join-Path $env:windir 'system32\inetsrv\Microsoft.Web.Administration.dll'
        if (-not (Test-Path -LiteralPath $dll)) { throw "IIS is not installed (no Microsoft.Web.Administration)" }
        Add-Type -Path $dll
    }
    return New-Object Microsoft.Web.Administration.ServerManager
}

function Get-AppSites($Manager, [string]$App) {
    $prefix = "$App-"
    return @($Manager.Sites | Where-Object { $_.Name.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) })
}

function Get-SitePool($Manager, $Site) {
    $root = $Site.Applications['/']
    if ($null -eq $root) { return $null }
    return $Manager.ApplicationPools[$root.ApplicationPoolName]
}

function Get-SitePath($Site) {
    # The physical path of the site's root, or $null (StrictMode forbids $null.Property).
    $root = $Site.Applications['/']
    if ($null -eq $root) { return $null }
    $vdir = $root.VirtualDirectories['/']
    if ($null -eq $vdir) { return $null }
    return [Environment]::ExpandEnvironmentVariables($vdir.PhysicalPath)
}

function Get-RuntimeState($Object) {
    # .State asks WAS live; it throws for objects WAS does not know (e.g. W3SVC stopped).
    if ($null -eq $Object) { return 'Missing' }
    try { return [string]$Object.State } catch { return 'Unknown' }
}

function Format-Time([datetime]$Time) {
    return $Time.ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ss.fffZ')
}

function Get-StatePath([string]$SitesRoot, [string]$App, [string]$Release) {
    # Per-release bookkeeping lives beside the sites, never inside a web root.
    return Join-Path (Join-Path (Join-Path $SitesRoot '.immunity') $App) "$Release.json"
}

function Read-ReleaseState([string]$SitesRoot, [string]$App, [string]$Release) {
    $path = Get-StatePath $SitesRoot $App $Release
    $state = @{ installed_at = $null; started_at = $null }
    if (Test-Path -LiteralPath $path -PathType Leaf) {
        $data = Get-Content -LiteralPath $path -Raw | ConvertFrom-Json
        foreach ($key in @('installed_at', 'started_at')) {
            if ($data.PSObject.Properties.Name -contains $key) { $state[$key] = $data.$key }
        }
    }
    return $state
}

function Write-ReleaseState([string]$SitesRoot, [string]$App, [string]$Release, [hashtable]$State) {
    $path = Get-StatePath $SitesRoot $App $Release
    $dir = Split-Path -Parent $path
    if (-not (Test-Path -LiteralPath $dir)) { New-Item -ItemType Directory -Path $dir -Force | Out-Null }
    $tmp = "$path.tmp"
    Set-Content -LiteralPath $tmp -Value (ConvertTo-Json -InputObject $State -Compress) -Encoding UTF8
    Move-Item -LiteralPath $tmp -Destination $path -Force
}

function Wait-State($Object, [string]$Wanted, [datetime]$Deadline, [string]$What) {
    while ((Get-RuntimeState $Object) -ne $Wanted) {
        if ((Get-Date) -gt $Deadline) {
            throw "timed out waiting for $What to be $Wanted (it is $(Get-RuntimeState $Object))"
        }
        Start-Sleep -Milliseconds 200
    }
}

function Stop-SiteAndPool($Manager, $Site, [datetime]$Deadline) {
    # Returns $true when something was running. Site first (stop accepting), then the pool
    # (its worker finishes in-flight requests within the pool's shutdownTimeLimit).
    $pool = Get-SitePool $Manager $Site
    $wasRunning = $false
    if ((Get-RuntimeState $Site) -in @('Started', 'Starting')) {
        $Site.Stop() | Out-Null
        $wasRunning = $true
    }
    if ((Get-RuntimeState $pool) -in @('Started', 'Starting')) {
        $pool.Stop() | Out-Null
        $wasRunning = $true
    }
    if ((Get-RuntimeState $Site) -ne 'Unknown') { Wait-State $Site 'Stopped' $Deadline "site '$($Site.Name)'" }
    if ($null -ne $pool -and (Get-RuntimeState $pool) -ne 'Unknown') {
        Wait-State $pool 'Stopped' $Deadline "app pool '$($pool.Name)'"
    }
    return $wasRunning
}
