# Install one release: unpack the package into <SitesRoot>\<App>-<Release> (through a
# temporary folder renamed into place, so a half-copied release is never seen), then create
# its app pool and site with the binding, both left STOPPED and not auto-started.
# Idempotent: an existing folder, pool or site is kept as it is.
param(
    [Parameter(Mandatory = $true)][string]$App,
    [Parameter(Mandatory = $true)][string]$Release,
    [Parameter(Mandatory = $true)][string]$PackageSource,
    [Parameter(Mandatory = $true)][string]$SitesRoot,
    [int]$BindingPort = 443,
    [string]$BindingProtocol = 'https',
    [string]$BindingHostname = '',
    [string]$CertificateThumbprint = '',
    [string]$CertificateStore = 'My',
    [string]$ManagedRuntimeVersion = 'v4.0'
)
#include _common.ps1

function Expand-Package([string]$Source, [string]$Destination) {
    if ($Source -match '^https?://') {
        $zip = Join-Path ([IO.Path]::GetTempPath()) ("immunity-" + [guid]::NewGuid().ToString('N') + '.zip')
        try {
            Invoke-WebRequest -Uri $Source -OutFile $zip -UseBasicParsing | Out-Null
            Expand-Archive -LiteralPath $zip -DestinationPath $Destination
        }
        finally { Remove-Item -LiteralPath $zip -Force -ErrorAction SilentlyContinue }
    }
    elseif (Test-Path -LiteralPath $Source -PathType Container) {
        Get-ChildItem -LiteralPath $Source -Force | Copy-Item -Destination $Destination -Recurse -Force
    }
    elseif (Test-Path -LiteralPath $Source -PathType Leaf) {
        Expand-Archive -LiteralPath $Source -DestinationPath $Destination
    }
    else {
        throw "package source '$Source' not found or not readable by $([Environment]::UserName)"
    }
}

try {
    Assert-Name $App 'app'
    Assert-Name $Release 'release'
    $name = "$App-$Release"
    $path = Join-Path $SitesRoot $name
    $created = @()

    if (-not (Test-Path -LiteralPath $path -PathType Container)) {
        if (-not (Test-Path -LiteralPath $SitesRoot)) { New-Item -ItemType Directory -Path $SitesRoot -Force | Out-Null }
        # leftovers of an interrupted install of this release
        Get-ChildItem -LiteralPath $SitesRoot -Directory -Force -Filter ".$name.partial-*" |
            Remove-Item -Recurse -Force
        $partial = Join-Path $SitesRoot (".$name.partial-" + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $partial | Out-Null
        try {
            Expand-Package $PackageSource $partial
            Rename-Item -LiteralPath $partial -NewName $name
        }
        catch {
            Remove-Item -LiteralPath $partial -Recurse -Force -ErrorAction SilentlyContinue
            throw
        }
        $created += 'folder'
        Write-ReleaseState $SitesRoot $App $Release @{ installed_at = (Format-Time (Get-Date)); started_at = $null }
    }

    $manager = Get-ServerManager
    if ($null -eq $manager.ApplicationPools[$name]) {
        $pool = $manager.ApplicationPools.Add($name)
        $pool.AutoStart = $false
        $pool.ManagedRuntimeVersion = $ManagedRuntimeVersion
        $created += 'pool'
    }
    if ($null -eq $manager.Sites[$name]) {
        $bindingInformation = "*:${BindingPort}:$BindingHostname"
        if ($BindingProtocol -eq 'https' -and $CertificateThumbprint) {
            $hash = [byte[]]@(for ($i = 0; $i -lt $CertificateThumbprint.Length; $i += 2) {
                    [Convert]::ToByte($CertificateThumbprint.Substring($i, 2), 16) })
            $site = $manager.Sites.Add($name, $bindingInformation, $path, $hash, $CertificateStore)
        }
        else {
            # https without a thumbprint uses the certificate already bound to 0.0.0.0:port
            $site = $manager.Sites.Add($name, $BindingProtocol, $bindingInformation, $path)
        }
        $site.ServerAutoStart = $false
        $site.Applications['/'].ApplicationPoolName = $name
        $created += 'site'
    }
    if ($created -contains 'pool' -or $created -contains 'site') { $manager.CommitChanges() }

    if ($created -contains 'site') {
        # a new site must not take the port from the running release
        $manager = Get-ServerManager
        $deadline = (Get-Date).AddSeconds(30)
        Stop-SiteAndPool $manager $manager.Sites[$name] $deadline | Out-Null
    }
    Write-Result @{ site = $name; path = $path; created = $created }
}
catch {
    Write-Failure $_.Exception.Message
}
