# Remove the named releases: site, app pool, folder and bookkeeping. Python decides which
# (never the active or the previous one); this script still refuses to remove a started site.
# Only <SitesRoot>\<App>-<release> is deleted: the folder of a site created elsewhere (by
# Octopus, by hand) is left where it is.
param(
    [Parameter(Mandatory = $true)][string]$App,
    [Parameter(Mandatory = $true)][string]$SitesRoot,
    [string[]]$Remove = @()
)
#include _common.ps1

try {
    Assert-Name $App 'app'
    $removed = @()
    foreach ($release in $Remove) {
        Assert-Name $release 'release'
        $name = "$App-$release"
        $manager = Get-ServerManager
        $site = $manager.Sites[$name]
        $path = Join-Path $SitesRoot $name
        if ($null -ne $site) {
            if ((Get-RuntimeState $site) -in @('Started', 'Starting')) {
                throw "refusing to remove release '$release': site '$name' is started"
            }
            $manager.Sites.Remove($site)
        }
        $pool = $manager.ApplicationPools[$name]
        if ($null -ne $pool) { $manager.ApplicationPools.Remove($pool) }
        $manager.CommitChanges()
        if (Test-Path -LiteralPath $path) { Remove-Item -LiteralPath $path -Recurse -Force }
        $statePath = Get-StatePath $SitesRoot $App $release
        if (Test-Path -LiteralPath $statePath) { Remove-Item -LiteralPath $statePath -Force }
        $removed += $release
    }
    Write-Result @{ removed = $removed }
}
catch {
    Write-Failure $_.Exception.Message
}
