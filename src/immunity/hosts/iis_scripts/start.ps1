# Make "<App>-<Release>" the one started site: stop every other "<App>-*" site and pool,
# mark only this one to auto-start (so a reboot brings back the active release), then
# start its pool and site. Only one site can bind the port, hence one started at a time.
param(
    [Parameter(Mandatory = $true)][string]$App,
    [Parameter(Mandatory = $true)][string]$Release,
    [Parameter(Mandatory = $true)][string]$SitesRoot,
    [double]$TimeoutSeconds = 120
)
#include _common.ps1

try {
    Assert-Name $App 'app'
    Assert-Name $Release 'release'
    $name = "$App-$Release"
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    $manager = Get-ServerManager
    if ($null -eq $manager.Sites[$name]) { throw "release '$Release' is not installed: no site '$name'" }

    $stopped = @()
    foreach ($site in (Get-AppSites $manager $App)) {
        $pool = Get-SitePool $manager $site
        $mine = $site.Name -eq $name
        if (-not $mine -and (Stop-SiteAndPool $manager $site $deadline)) { $stopped += $site.Name }
        $site.ServerAutoStart = $mine
        if ($null -ne $pool) { $pool.AutoStart = $mine }
    }
    $manager.CommitChanges()

    $manager = Get-ServerManager   # a committed manager is read-only
    $site = $manager.Sites[$name]
    $pool = Get-SitePool $manager $site
    if ($null -eq $pool) { throw "site '$name' has no application pool" }
    if ((Get-RuntimeState $pool) -notin @('Started', 'Starting')) { $pool.Start() | Out-Null }
    Wait-State $pool 'Started' $deadline "app pool '$($pool.Name)'"
    if ((Get-RuntimeState $site) -notin @('Started', 'Starting')) { $site.Start() | Out-Null }
    Wait-State $site 'Started' $deadline "site '$name'"

    $state = Read-ReleaseState $SitesRoot $App $Release
    $state.started_at = Format-Time (Get-Date)
    Write-ReleaseState $SitesRoot $App $Release $state
    Write-Result @{ started = $name; stopped = $stopped }
}
catch {
    Write-Failure $_.Exception.Message
}
