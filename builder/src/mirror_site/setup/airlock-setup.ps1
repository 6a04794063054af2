# airlock: configures pip, npm, Go, NuGet and the Pulumi CLI of the current user for this
# appliance's mirrors, and makes them trust the appliance's CA.
# Usage: $env:AIRLOCK_CA_SHA256 = '<fingerprint>'; irm <mirror>/setup/airlock-setup.ps1 | iex
#    or: .\airlock-setup.ps1 [-Base URL] [-CaSha256 FINGERPRINT] [-System]
#
# The fingerprint is the SHA-256 of the appliance's CA as its console banner prints it
# ("ca sha256: AB:CD:..."; case and colons do not matter). The script downloads <Base>/ca.crt
# and, when the fingerprint differs, refuses and configures nothing. Over https it is required
# (that one download cannot check the server's certificate: the CA is what it fetches); over
# http it is optional and the script prints the CA's fingerprint to compare with the banner.
# The CA is imported into CurrentUser\Root (Windows asks to confirm; Go, the Pulumi CLI and
# dotnet/NuGet use that store), or with -System (as administrator) into LocalMachine\Root.
# pip and npm get a bundle (the system's roots, read now, plus the CA) because their `cert` and
# `cafile` settings replace their default list; node-based tools get NODE_EXTRA_CA_CERTS.
param(
    [string]$Base = $(if ($env:AIRLOCK_MIRROR) { $env:AIRLOCK_MIRROR } else { '@AIRLOCK_MIRROR_URL@' }),
    [string]$CaSha256 = $env:AIRLOCK_CA_SHA256,
    [switch]$System
)
$ErrorActionPreference = 'Stop'
$Base = $Base.TrimEnd('/')
if ($Base -notmatch '^https?://') { throw "airlock-setup: '$Base' is not an http(s) URL" }
$uri = [Uri]$Base
$onWindows = $IsWindows -or $env:OS -eq 'Windows_NT'
$appData = if ($env:APPDATA) { $env:APPDATA } else { Join-Path $HOME '.config' }

function Format-Fingerprint([byte[]]$hash) { ($hash | ForEach-Object { $_.ToString('X2') }) -join ':' }
$want = if ($CaSha256) { ($CaSha256 -replace '[:\s]', '').ToUpperInvariant() } else { '' }
if ($want -and $want -notmatch '^[0-9A-F]{64}$') {
    throw 'airlock-setup: the CA fingerprint must be 32 hex bytes, as the banner shows it (ca sha256: AB:CD:...)'
}
if (-not $want -and $uri.Scheme -eq 'https') {
    throw "airlock-setup: over https the CA's fingerprint is required, since nothing else can vouch for the CA this script downloads: pass -CaSha256 or set AIRLOCK_CA_SHA256, copied from the appliance's console banner (ca sha256: ...). Nothing was configured."
}
if ($System -and -not $onWindows) { throw 'airlock-setup: -System is for Windows; elsewhere run airlock-setup.sh --system as root.' }

# The CA: over https with certificate checks off for this one download only; the fingerprint,
# not TLS, is what vouches for it.
$caUrl = "$Base/ca.crt"
if ($uri.Scheme -eq 'https' -and $PSVersionTable.PSVersion.Major -ge 6) {
    $text = (Invoke-WebRequest -UseBasicParsing -SkipCertificateCheck -TimeoutSec 60 -Uri $caUrl).Content
} elseif ($uri.Scheme -eq 'https') {
    $saved = [Net.ServicePointManager]::ServerCertificateValidationCallback
    [Net.ServicePointManager]::ServerCertificateValidationCallback = { $true }
    try { $text = (Invoke-WebRequest -UseBasicParsing -TimeoutSec 60 -Uri $caUrl).Content }
    finally { [Net.ServicePointManager]::ServerCertificateValidationCallback = $saved }
} else {
    $text = (Invoke-WebRequest -UseBasicParsing -TimeoutSec 60 -Uri $caUrl).Content
}
if ($text -is [byte[]]) { $text = [Text.Encoding]::ASCII.GetString($text) }
# Exactly one certificate, and only it is kept: nothing unverified rides along into a trust store.
$blocks = [regex]::Matches($text, '-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----')
if ($blocks.Count -ne 1 -or ([regex]::Matches($text, 'BEGIN CERTIFICATE')).Count -ne 1) {
    throw "airlock-setup: $caUrl does not hold exactly one complete PEM certificate. Nothing was configured."
}
$der = [Convert]::FromBase64String(($blocks[0].Groups[1].Value -replace '\s', ''))
$cert = [Security.Cryptography.X509Certificates.X509Certificate2]::new([byte[]]$der)
$sha = [Security.Cryptography.SHA256]::Create()
$got = Format-Fingerprint $sha.ComputeHash($der)
if ($want) {
    if (($got -replace ':', '') -ne $want) {
        throw "airlock-setup: the CA served at $caUrl has the SHA-256 fingerprint $got, not $(($want -split '(..)' -ne '') -join ':'): refusing it (is something else answering at $($uri.Authority)?). Nothing was configured."
    }
    Write-Output "ca: $caUrl has the expected fingerprint $got"
} else {
    Write-Output "ca: $caUrl has the SHA-256 fingerprint"
    Write-Output "      $got"
    Write-Output "    compare it with the appliance's console banner (ca sha256: ...); if they differ, do not use"
    Write-Output "    this configuration, and run the script again with -CaSha256 FINGERPRINT."
}
$pem = "-----BEGIN CERTIFICATE-----`n" + [Convert]::ToBase64String($der, 'InsertLineBreaks') + "`n-----END CERTIFICATE-----`n"

$airlockDir = Join-Path $appData 'airlock'
New-Item -ItemType Directory -Force -Path $airlockDir | Out-Null
$caFile = Join-Path $airlockDir 'ca.crt'
Set-Content -Path $caFile -Value $pem -NoNewline
if ($onWindows) {
    $store = if ($System) { 'Cert:\LocalMachine\Root' } else { 'Cert:\CurrentUser\Root' }
    Import-Certificate -FilePath $caFile -CertStoreLocation $store | Out-Null
    Write-Output "ca: imported into $store (Go, the Pulumi CLI and dotnet/NuGet use it)"
}
# pip's `cert` and npm's `cafile` replace their default roots: the system's roots plus the CA.
$roots = @()
if ($onWindows) {
    $roots = Get-ChildItem Cert:\LocalMachine\Root, Cert:\CurrentUser\Root | Where-Object { $_.Thumbprint -ne $cert.Thumbprint } |
        ForEach-Object { "-----BEGIN CERTIFICATE-----`n" + [Convert]::ToBase64String($_.RawData, 'InsertLineBreaks') + "`n-----END CERTIFICATE-----`n" }
} else {
    $systemBundle = @('/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/ca-bundle.pem',
        '/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem', '/etc/pki/tls/cacert.pem', '/etc/ssl/cert.pem') |
        Where-Object { Test-Path -PathType Leaf $_ } | Select-Object -First 1
    if ($systemBundle) { $roots = @((Get-Content -Raw $systemBundle) + "`n") }
}
$bundle = Join-Path $airlockDir 'ca-bundle.pem'
Set-Content -Path $bundle -Value (($roots -join '') + $pem) -NoNewline
Write-Output "ca: $caFile; bundle for pip and npm: $bundle ($($roots.Count) system roots + the CA)"

$pipDir = Join-Path $appData 'pip'
New-Item -ItemType Directory -Force -Path $pipDir | Out-Null
$pip = "[global]`nindex-url = $Base/pypi/simple/`ncert = $bundle`n"
if ($uri.Scheme -eq 'http') { $pip += "trusted-host = $($uri.Host)`n" }
Set-Content -Path (Join-Path $pipDir $(if ($onWindows) { 'pip.ini' } else { 'pip.conf' })) -Value $pip
Write-Output "pip: $pipDir"

$npmrc = Join-Path $HOME '.npmrc'
$lines = @(if (Test-Path $npmrc) { Get-Content $npmrc | Where-Object { $_ -notmatch '^\s*(registry|cafile)\s*=' } })
$lines += "registry=$Base/npm/", "cafile=$bundle"
Set-Content -Path $npmrc -Value $lines
Write-Output "npm: $npmrc"

$goDir = Join-Path $appData 'go'
New-Item -ItemType Directory -Force -Path $goDir | Out-Null
$goEnv = Join-Path $goDir 'env'
$lines = @(if (Test-Path $goEnv) { Get-Content $goEnv | Where-Object { $_ -notmatch '^\s*(GOPROXY|GOSUMDB|GOTOOLCHAIN)\s*=' } })
$lines += "GOPROXY=$Base/go,off", 'GOSUMDB=off', 'GOTOOLCHAIN=local'
Set-Content -Path $goEnv -Value $lines
Write-Output "go: $goEnv"

$nugetDir = Join-Path $appData 'NuGet'
New-Item -ItemType Directory -Force -Path $nugetDir | Out-Null
# NuGet.Config with this appliance as the only source (the build writes it into the here-string).
$nuget = @"
@NUGET_CONFIG@
"@
Set-Content -Path (Join-Path $nugetDir 'NuGet.Config') -Value $nuget
Write-Output "nuget: $nugetDir\NuGet.Config"

[Environment]::SetEnvironmentVariable('PULUMI_SKIP_UPDATE_CHECK', 'true', 'User')
[Environment]::SetEnvironmentVariable('PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES', ".*=$Base/pulumi/plugins", 'User')
[Environment]::SetEnvironmentVariable('NODE_EXTRA_CA_CERTS', $caFile, 'User')
Write-Output "pulumi: PULUMI_SKIP_UPDATE_CHECK, PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES, NODE_EXTRA_CA_CERTS (user environment)"
Write-Output "airlock-setup: configured for $Base"
