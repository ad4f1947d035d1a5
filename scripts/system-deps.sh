#!/bin/sh
# Debian packages the tests need: a real PACS (Orthanc + DICOMweb), the DICOM validator (dciodvfy),
# dcmtk (storescu/dcmdump), plastimatch (an independent RTSTRUCT reader), headless Chromium for the web page and Xvfb + xcb libraries for napari.
# Idempotent: installs only what is missing; does nothing (with a note) when not root or not on Debian.
set -e
PACKAGES="orthanc orthanc-dicomweb dicom3tools dcmtk plastimatch chromium xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: missing Debian packages:$missing (run this script as root on Debian/Ubuntu to install them)" >&2
    exit 0
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing
# The Debian orthanc package may start a system service on install; the tests start their own.
if command -v service >/dev/null; then service orthanc stop >/dev/null 2>&1 || true; fi
