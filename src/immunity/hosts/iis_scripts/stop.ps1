# Stop every started "<App>-*" site and its app pool; done when all are Stopped.
param(
    [Parameter(Mandatory = $true)][string]$App,
    [double]$TimeoutSeconds = 120
)
#include _common.ps1

try {
    Assert-Name $App 'app'
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    $manager = Get-ServerManager
    $stopped = @()
    foreach ($site in (Get-AppSites $manager $App)) {
        if (Stop-SiteAndPool $manager $site $deadline) { $stopped += $site.Name }
    }
    Write-Result @{ stopped = $stopped }
}
catch {
    Write-Failure $_.Exception.Message
}
