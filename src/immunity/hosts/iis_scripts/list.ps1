# List the app's releases: every site named "<App>-<release>", its runtime state and times.
param(
    [Parameter(Mandatory = $true)][string]$App,
    [Parameter(Mandatory = $true)][string]$SitesRoot
)
#include _common.ps1

try {
    Assert-Name $App 'app'
    $manager = Get-ServerManager
    $releases = @()
    foreach ($site in (Get-AppSites $manager $App)) {
        $release = $site.Name.Substring($App.Length + 1)
        $pool = Get-SitePool $manager $site
        $path = Get-SitePath $site
        $state = Read-ReleaseState $SitesRoot $App $release
        if ($null -eq $state.installed_at -and $path -and (Test-Path -LiteralPath $path)) {
            # a site we did not install (e.g. by Octopus): its folder's creation time
            $state.installed_at = Format-Time (Get-Item -LiteralPath $path).CreationTimeUtc
        }
        $poolName = $null
        if ($null -ne $pool) { $poolName = $pool.Name }
        $releases += @{
            release      = $release
            site         = $site.Name
            site_state   = Get-RuntimeState $site
            pool         = $poolName
            pool_state   = Get-RuntimeState $pool
            path         = $path
            installed_at = $state.installed_at
            started_at   = $state.started_at
        }
    }
    Write-Result @{ releases = $releases }
}
catch {
    Write-Failure $_.Exception.Message
}
