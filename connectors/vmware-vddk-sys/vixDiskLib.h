/*
 * The part of VMware's Virtual Disk Development Kit (VDDK) interface that Holdfast uses, written
 * for Holdfast from VMware's public VDDK API reference (function and type names, argument order,
 * enum values and struct layouts as documented for VDDK 6.5 to 8.0). VMware's own headers are
 * not used. Bindings: src/bindings.rs, generated from this file by scripts/vddk-bindings.sh.
 */
#include <stdint.h>
#include <stdarg.h>

typedef uint64_t VixError;
typedef char Bool;

/* Error codes (the low VIX codes VixDiskLib returns). */
#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_OUT_OF_MEMORY 2
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_NOT_SUPPORTED 6
#define VIX_E_FILE_ERROR 7
#define VIX_E_FILE_READ_ONLY 11
#define VIX_E_FILE_ACCESS_ERROR 13
#define VIX_E_AUTHENTICATION_FAIL 35
#define VIX_E_HOST_CONNECTION_LOST 36

#define VIXDISKLIB_SECTOR_SIZE 512

/* VixDiskLib_Open flags. */
#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4

/* QueryAllocatedBlocks: chunks of at least this many sectors, at most this many per call. */
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;

/* printf-style log callback: a format and its va_list. */
typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);

typedef enum {
  VIXDISKLIB_CRED_UID = 1,
  VIXDISKLIB_CRED_SESSIONID = 2,
  VIXDISKLIB_CRED_TICKETID = 3,
  VIXDISKLIB_CRED_SSPI = 4,
  VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

typedef enum {
  VIXDISKLIB_SPEC_VMX = 0,
  VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
  VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

typedef struct {
  char *userName;
  char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {
  char *cookie;
  char *userName;
  char *key;
} VixDiskLibSessionIdCreds;

typedef struct {
  char *id;
  char *datastoreMoRef;
  char *ssId;
} VixDiskLibVStorageObjectSpec;

typedef struct {
  char *vmxSpec;            /* "moref=vm-42" */
  char *serverName;         /* vCenter or ESXi */
  char *thumbPrint;         /* the server certificate's thumbprint, "AB:CD:…" */
  long reserved1;
  VixDiskLibCredType credType;
  union {
    VixDiskLibUidPasswdCreds uid;
    VixDiskLibSessionIdCreds sessionId;
    void *reserved2;
  } creds;
  uint32_t port;            /* 0: 443 */
  uint32_t nfcHostPort;     /* 0: 902 */
  char *reserved3;
  char reserved4[8];
  void *reserved5;
  union {
    VixDiskLibVStorageObjectSpec vStorageObjSpec;
  } spec;
  VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} VixDiskLibGeometry;

typedef enum {
  VIXDISKLIB_ADAPTER_IDE = 1,
  VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
  VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
  VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

/* The fields every VDDK version has (7.0 appends sector sizes; the library allocates it). */
typedef struct {
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  uint64_t capacity;        /* in sectors */
  VixDiskLibAdapterType adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
} VixDiskLibInfo;

typedef struct {
  uint64_t offset;          /* sectors */
  uint64_t length;          /* sectors */
} VixDiskLibBlock;

typedef struct {
  uint32_t numBlocks;
  VixDiskLibBlock blocks[1];
} VixDiskLibBlockList;

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion, VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic, const char *libDir,
                           const char *configFile);
void VixDiskLib_Exit(void);
const char *VixDiskLib_ListTransportModes(void);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *connectParams, Bool readOnly, const char *snapshotRef,
                              const char *transportModes, VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
/* vCenter: keep the VM from being moved (Storage vMotion) while its disks are read; identity
 * names the application to vSphere's admins. EndAccess undoes it, with the same parameters. */
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *connectParams, const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *connectParams, const char *identity);
VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags,
                         VixDiskLibHandle *diskHandle);
VixError VixDiskLib_Close(VixDiskLibHandle diskHandle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle diskHandle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle diskHandle);
VixError VixDiskLib_Read(VixDiskLibHandle diskHandle, uint64_t startSector, uint64_t numSectors, uint8_t *readBuffer);
VixError VixDiskLib_Write(VixDiskLibHandle diskHandle, uint64_t startSector, uint64_t numSectors,
                          const uint8_t *writeBuffer);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle diskHandle, uint64_t startSector, uint64_t numSectors,
                                         uint64_t chunkSize, VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
