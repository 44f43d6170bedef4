// The TCG software stack (Debian libtss2-dev): ESAPI, the TCTI loader, and the marshalling library.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tctildr.h>
