#ifndef REFERRALD_CLIBPQ_SHIM_H
#define REFERRALD_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
