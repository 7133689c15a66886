#!/usr/bin/env bash
# SoftHSMv2's late view, without hsm-kms (docs/pkcs11-portability.md,
# "Late views"): one long-lived SoftHSMv2 instance (a small C program) reads
# token info and searches token objects in a loop, while `pkcs11-tool
# --login --keygen` makes keys in other processes. Every 500 reads the
# instance tries C_CreateObject: CKR_GENERAL_ERROR (0x5) means its OSToken
# went invalid ("Token integrity check failed") and it no longer sees new
# objects of other processes.
#
#   scripts/repro-softhsm-late-view.sh [SECONDS per case (20)] [MODULE]
#
# Cases: keygen writer + C_GetTokenInfo reader (breaks within a second or
# two on a 2-core machine), keygen writer without C_GetTokenInfo, and
# login-only writer with C_GetTokenInfo (both stay valid: the bad read of
# token.object and a later re-index are both needed).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECS=${1:-20}
MODULE=${2:-/usr/lib/softhsm/libsofthsm2.so}
apt_install softhsm2 opensc libp11-kit-dev
command -v cc >/dev/null 2>&1 || apt_install build-essential
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/reader.c" <<'C'
/* Reads token info (token.object) in a loop while other processes log in
 * (each C_Login rewrites token.object); every 500 reads, tries to create a
 * session-less token object: CKR_GENERAL_ERROR once the OSToken is invalid. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <p11-kit/pkcs11.h>
int main(int argc,char**argv){
  int secs=atoi(argv[1]); int info=argc>2?atoi(argv[2]):1;
  void*h=dlopen(getenv("MODULE"),RTLD_NOW);
  CK_C_GetFunctionList gfl=(CK_C_GetFunctionList)dlsym(h,"C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f; gfl(&f);
  CK_C_INITIALIZE_ARGS ia={0}; ia.flags=CKF_OS_LOCKING_OK; f->C_Initialize(&ia);
  CK_SLOT_ID slots[8]; CK_ULONG ns=8; f->C_GetSlotList(CK_TRUE,slots,&ns);
  CK_SESSION_HANDLE s; f->C_OpenSession(slots[0],CKF_SERIAL_SESSION|CKF_RW_SESSION,0,0,&s);
  if(f->C_Login(s,CKU_USER,(CK_UTF8CHAR_PTR)"1234",4)){puts("login");return 2;}
  time_t end=time(0)+secs; long it=0;
  while(time(0)<end){
    CK_TOKEN_INFO ti; if(info) f->C_GetTokenInfo(slots[0],&ti);
    CK_BBOOL t=CK_TRUE; CK_ATTRIBUTE tmpl[]={{CKA_TOKEN,&t,1}};
    CK_OBJECT_HANDLE hs[16]; CK_ULONG n=0; f->C_FindObjectsInit(s,tmpl,1); f->C_FindObjects(s,hs,16,&n); f->C_FindObjectsFinal(s);
    if(++it%500==0){
      CK_OBJECT_CLASS c=CKO_DATA; CK_ATTRIBUTE dt[]={{CKA_CLASS,&c,sizeof c},{CKA_TOKEN,&t,1},{CKA_LABEL,"probe",5}};
      CK_OBJECT_HANDLE o; CK_RV rv=f->C_CreateObject(s,dt,3,&o);
      if(rv){ printf("token view invalid after %ld reads (%lds): C_CreateObject rv=0x%lx\n",it,(long)(secs-(end-time(0))),rv); return 1;}
      f->C_DestroyObject(s,o);
    }
  }
  printf("still valid after %ld reads\n",it); return 0;
}
C
cc -O1 -I/usr/include/p11-kit-1 -o "$WORK/reader" "$WORK/reader.c" -ldl
export MODULE
run() { # run WRITER(keygen|login) GETTOKENINFO(1|0)
    local d=$WORK/tok.$1.$2
    mkdir -p "$d/tokens"
    export SOFTHSM2_CONF=$d/softhsm2.conf
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/tokens" >"$SOFTHSM2_CONF"
    softhsm2-util --init-token --free --label t --so-pin 12345678 --pin 1234 >/dev/null
    (
        i=0
        while :; do
            i=$((i + 1))
            if [ "$1" = login ]; then
                pkcs11-tool --module "$MODULE" --login --pin 1234 -O >/dev/null 2>&1 || true
            else
                pkcs11-tool --module "$MODULE" --login --pin 1234 --keygen --key-type aes:32 \
                    --id "$(printf %06x $i)" >/dev/null 2>&1 || true
            fi
        done
    ) &
    local writer=$!
    log "writer=$1 C_GetTokenInfo=$2: $("$WORK/reader" "$SECS" "$2" || true)"
    kill "$writer"
    wait "$writer" 2>/dev/null || true
}
run keygen 1
run keygen 0
run login 1
